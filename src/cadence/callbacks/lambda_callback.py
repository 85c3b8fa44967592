"""LambdaCallback: a one-off handler from a plain function, without writing a class."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cadence import Callback
from cadence.access import parse_state_access
from cadence.callback import Handler
from cadence.events import Event
from cadence.graph import HandlerCall
from cadence.phases import Phase
from cadence.introspection.signatures import check_handler_function

__all__ = ["LambdaCallback"]


class LambdaCallback(Callback):
    """Calls ``fn(event, phase, learner)`` at ``event`` in ``phase`` (and their subclasses).

    The handler is named after the function, so ``explain()``, error notes and
    ``CallbackTimer`` show ``LambdaCallback.log_lr``; a lambda, or a function whose name
    clashes with an attribute of the callback, shows as ``LambdaCallback.run``. Every
    ``LambdaCallback`` has the type name ``LambdaCallback``: two of them are labelled
    ``LambdaCallback#1`` and ``LambdaCallback#2``, and ``run_after = (LambdaCallback,)``
    matches them all.

    Args:
        fn: Called as ``fn(event, phase, learner)``, with the learner view that enforces
            ``state_access``.
        event: The event class to handle, e.g. ``BatchEnd``.
        phase: The phase class to handle it in; ``Phase`` (the default) means every phase.
        state_access: What ``fn`` touches, as for any callback, e.g. ``{"batch.loss": READ}``.
            Validated here; ``None`` means no access.
        run_after: Callback types this one runs after, e.g. ``(Recorder,)``.

    Raises:
        TypeError: ``fn`` is not callable or cannot be called as ``fn(event, phase, learner)``,
            or ``event``/``phase`` is not an event/phase class.
        DeclarationError: ``state_access`` is malformed.

    Example:
        >>> from cadence import READ
        >>> from cadence.events import BatchEnd
        >>> from cadence.phases import TrainingPhase
        >>> from cadence.testing import make_test_learner
        >>> losses = []
        >>> def keep_loss(event, phase, learner):
        ...     losses.append(float(learner.batch.loss))
        >>> callback = LambdaCallback(
        ...     keep_loss, BatchEnd, phase=TrainingPhase, state_access={"batch.loss": READ}
        ... )
        >>> learner = make_test_learner(callback, n_batches=4)
        >>> _ = learner.fit(2)
        >>> len(losses)
        8
        >>> print(learner.explain(BatchEnd))
        BatchEnd in TrainingPhase:
          1. LambdaCallback.keep_loss
    """

    def __init__(
        self,
        fn: HandlerCall,
        event: type[Event],
        phase: type[Phase] = Phase,
        *,
        state_access: Mapping[str, Any] | None = None,
        run_after: tuple[type[Any], ...] = (),
    ) -> None:
        if not callable(fn):
            raise TypeError(
                f"LambdaCallback(fn, ...) expects a function fn(event, phase, learner); got "
                f"{type(fn).__name__}."
            )
        check_handler_function(fn, "LambdaCallback(fn, ...)")
        name = getattr(fn, "__name__", "run")
        self.fn = fn
        self.event = _check_class(event, Event, "event", "BatchEnd")
        self.phase = _check_class(phase, Phase, "phase", "TrainingPhase")
        self.state_access = {} if state_access is None else state_access
        self.run_after = run_after
        # Validate now, naming the function, rather than only when a learner is built.
        parse_state_access(f"LambdaCallback({name})", self.state_access)
        if not name.isidentifier() or name.startswith("_") or hasattr(self, name):
            name = "run"
        # fn already has the handler signature: binding it under its own name costs nothing
        # per call, and graph labels read LambdaCallback.<name>.
        setattr(self, name, fn)
        self._handler = Handler(self.event, self.phase, name)
        vars(self)["handlers"] = (self._handler,)

    def handler_for(self, event: type[Event], phase: type[Phase]) -> str | None:
        """The handler's name when (event, phase) is the configured pair or a subclass of it."""
        return self._handler.name if self._handler.matches(event, phase) else None

    def __repr__(self) -> str:
        name = getattr(self.fn, "__name__", repr(self.fn))
        phase = "" if self.phase is Phase else f", phase={self.phase.__name__}"
        return f"LambdaCallback({name}, {self.event.__name__}{phase})"


def _check_class(value: Any, base: type[Any], what: str, example: str) -> Any:
    if isinstance(value, type) and issubclass(value, base):
        return value
    if isinstance(value, base):
        raise TypeError(
            f"LambdaCallback(..., {what}=...) expects the class, not an instance: pass "
            f"{type(value).__name__}, not {type(value).__name__}()."
        )
    shown = value.__name__ if isinstance(value, type) else repr(value)
    article = "an" if base.__name__[0] in "AEIOU" else "a"
    raise TypeError(
        f"LambdaCallback(..., {what}=...) expects {article} {base.__name__} class such as "
        f"{example}; got {shown}."
    )
