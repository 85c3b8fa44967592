"""``LoggerCallback``: what the callbacks that write to backends have in common.

They attach their backends at ``FitBegin`` (a fresh fit into an earlier run's logs is refused
there, before any training), flush them at the end of every epoch (after its validation,
when there is one; a backend that several callbacks share is flushed once, since a flush
with nothing new costs nothing), and detach them at ``FitEnd`` (the last callback to detach a
shared backend closes it), on every way a fit ends.
Across fits they go on with their logs (``reset_when = "learner"``): a second fit of the same
learner appends to them, on the step axis the learner continues; reused in another learner,
they start another run's logs (``reset``). Two backend instances on one log (one CSV file, one
TensorBoard folder, one MLflow run) are refused at ``FitBegin``: pass one instance to every
callback that writes there.
They declare only ``READ`` access, so the graph runs them after whatever writes what they log,
in any list order, and they save their backends' positions in checkpoints. In a distributed fit
they run on rank 0 alone (``placement = "rank_zero"``), which logs the values ``Metrics``
reduced over every rank.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from cadence.access import READ
from cadence.callback import Callback, callback_labels, on
from cadence.errors import LoggerError
from cadence.events import EpochEnd, Event, FitBegin, FitEnd
from cadence.loggers.backend import Backend
from cadence.loggers.run import Run
from cadence.loggers.values import Loggable
from cadence.phases import Phase, TrainingPhase
from cadence.introspection.signatures import constructor_repr

__all__ = ["LoggerCallback", "check_every", "position"]

_TRAINING = TrainingPhase()


def check_every(owner: str, every: object, example: int) -> int:
    """``every`` as a positive int, or a ``ValueError`` naming ``owner``."""
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"{owner}(every=...) expects a number of training steps >= 1, e.g. every={example}; got {every!r}.")
    return every


class LoggerCallback(Callback):
    """Base class of callbacks that write to logger backends.

    Args:
        backends: The backends written to; several callbacks may share one.

    Extending:
        1. Subclass ``LoggerCallback`` and declare ``state_access`` (``READ`` only, and
           ``"cbstate.history": READ`` for the step axis); ``"cbstate.run": READ`` is added
           for backends that write into the run folder.
        2. Write with ``self.log(values, learner, phase)`` from your handlers; at ``FitBegin``
           override ``began(event, learner)`` (its writes wait until a resumed fit's position
           is restored), at epoch ends override ``epoch_ended(phase, learner)``. Values are
           checked when they are built (``Image("x", pixels)`` raises for bad pixels).
        3. Log only on logging steps or at epoch ends: reading a device tensor is a sync.
        4. It runs on rank 0 only in a distributed fit (``placement``): run no collective in it.
    """

    writes_files = True  # fit(fast_dev_run=True) runs without loggers
    placement = "rank_zero"
    reset_when = "learner"  # a second fit of the learner appends to its logs, on its step axis

    def __init__(self, backends: Sequence[Backend]) -> None:
        name = type(self).__name__
        if not backends:
            raise ValueError(
                f"{name} needs at least one backend to write to, e.g. {name}(TensorBoardLogger(), CSVLogger())."
            )
        for backend in backends:
            if isinstance(backend, type):
                raise TypeError(f"{name} got the class {backend.__name__}; pass an instance: {backend.__name__}().")
            if not isinstance(backend, Backend):
                raise TypeError(
                    f"{name} writes to logger backends such as TensorBoardLogger(), MLflowLogger() or "
                    f"CSVLogger(); got {type(backend).__name__}."
                )
        if len({id(b) for b in backends}) != len(backends):
            raise ValueError(f"{name} was given the same backend twice; pass each once.")
        self.backends = tuple(backends)
        if any(b.needs_run for b in self.backends):
            self.state_access = {**type(self).state_access, "cbstate.run": READ}
        self._active = False
        self._validates = True  # a training epoch is followed by validation (its end flushes)

    def began(self, event: FitBegin, learner: Any) -> None:
        """At ``FitBegin``, after the backends are attached."""

    def epoch_ended(self, phase: Phase, learner: Any) -> None:
        """At every epoch end, before the backends are flushed."""

    def reset(self) -> None:
        """Reused in another learner: that fit is another run, so every backend starts a fresh
        log (refused where an earlier run's values are; ``Backend.reset``). Subclasses that
        keep state of their own reset it too and call ``super().reset()``."""
        for backend in self.backends:
            backend.reset()

    @on(FitBegin)
    def fit_begin(self, event: FitBegin, phase: Phase, learner: Any) -> None:
        run = learner.cbstate.run if any(b.needs_run for b in self.backends) else None
        _refuse_shared_logs(self, event, run)
        for backend in self.backends:
            backend.attach(self, run, event)
        self._active = True
        self._validates = event.data is None or event.data[1] is not None
        self.began(event, learner)

    @on(EpochEnd)
    def epoch_end(self, event: Event, phase: Phase, learner: Any) -> None:
        if not self._active:
            return
        self.epoch_ended(phase, learner)
        if self._validates and isinstance(phase, TrainingPhase):
            return  # the validation epoch that follows ends this epoch, and flushes
        for backend in self.backends:
            backend.flush()

    @on(FitEnd)
    def fit_end(self, event: Event, phase: Phase, learner: Any) -> None:
        self._active = False
        errors: list[Exception] = []
        for backend in self.backends:
            try:
                backend.detach(self)
            except Exception as error:  # strict=True: close the others first
                errors.append(error)
        if errors:
            raise errors[0]

    def log(
        self, values: Sequence[Loggable], learner: Any, phase: Phase | None, *, in_batch: bool = False, deferred: bool = False
    ) -> None:
        """Write ``values`` to every backend at the current training step and epoch, for
        ``phase`` (None: the whole run). ``in_batch``: from a training batch's handler;
        ``deferred``: at the step the fit continues from (for ``FitBegin``)."""
        if not self._active or not values:
            return
        step, epoch = position(learner, in_batch=in_batch)
        for backend in self.backends:
            backend.write(values, step=None if deferred else step, epoch=epoch, phase=None if phase is None else phase.name)

    def state_dict(self) -> dict[str, Any]:
        """Each backend's position (flushed first), for a resumed run to continue from."""
        return {"backends": [backend.state_dict() for backend in self.backends]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("backends", [])
        if len(saved) != len(self.backends):
            raise ValueError(
                f"{type(self).__name__}.load_state_dict got the state of {len(saved)} backend(s); this "
                f"{type(self).__name__} has {len(self.backends)}. Resume with the backends the checkpoint was taken with."
            )
        for backend, backend_state in zip(self.backends, saved):
            backend.load_state_dict(backend_state)

    def __repr__(self) -> str:
        """``LogMetrics(TensorBoardLogger('runs/x/tensorboard'), every=50)``: the backends, then
        the arguments that differ from their defaults (as ``Callback.__repr__`` shows them)."""
        parameter = inspect.signature(type(self).__init__).parameters.get("backends")
        if parameter is not None and parameter.kind is not parameter.VAR_POSITIONAL:
            return constructor_repr(self)  # backends as one argument: shown as given
        arguments = constructor_repr(self).partition("(")[2][:-1]  # *backends is not among them
        shown = [repr(b) for b in self.backends] + ([arguments] if arguments else [])
        return f"{type(self).__name__}({', '.join(shown)})"


def _refuse_shared_logs(owner: LoggerCallback, begin: FitBegin, run: Run | None) -> None:
    """Raise ``LoggerError`` when one of ``owner``'s backends writes the log that another
    backend instance of the fit's logger callbacks writes too."""
    callbacks = list(begin.callbacks)
    writers: dict[tuple[str, ...], list[tuple[str, Backend]]] = {}
    for label, callback in zip(callback_labels(callbacks), callbacks):
        logger = _logger_in(callback)
        for backend in () if logger is None else logger.backends:
            key = backend.log_key(run)
            if key is not None:
                writers.setdefault(key, []).append((label, backend))
    for backend in owner.backends:
        key = backend.log_key(run)
        if key is not None and len({id(b) for _, b in writers[key]}) > 1:
            raise LoggerError(_shared_message(writers[key], run))


def _shared_message(found: list[tuple[str, Backend]], run: Run | None) -> str:
    labels = list(dict.fromkeys(label for label, _ in found))
    first = found[0][1]
    where = first.location if first.location is not None or run is None else run.path / first.default_name
    kind, count = type(first).__name__, len({id(b) for _, b in found})
    made = f"{kind}({str(first.location)!r})" if first.location is not None else f"{kind}()"
    if len(labels) == 1:
        who, fix = f"{labels[0]} writes", f"pass it once: {_class(labels[0])}({made})"
    else:
        who = f"{', '.join(labels[:-1])} and {labels[-1]} write"
        fix = f"make one and pass that instance to each: logger = {made}; " + ", ".join(
            f"{_class(label)}(logger, ...)" for label in labels
        )
    return (
        f"{who} to one log, {str(where)!r}, through {'two' if count == 2 else count} {kind} instances: "
        f"{first.shared_harm}. A log is written through one {kind}; {fix}."
    )


def _class(label: str) -> str:
    return label.partition("#")[0]


def _logger_in(callback: Callback) -> LoggerCallback | None:
    """``callback`` if it is a logger callback, or the one it wraps (``throttle``)."""
    seen: list[Callback] = []
    while not isinstance(callback, LoggerCallback):
        seen.append(callback)
        inner = getattr(callback, "__dict__", {}).get("callback")
        if not isinstance(inner, Callback) or any(inner is c for c in seen):
            return None
        callback = inner
    return callback


def position(learner: Any, *, in_batch: bool = False) -> tuple[int, int]:
    """``(step, epoch)`` on the run's one step axis: training steps done, and the training
    epoch they belong to (from 1; a validation epoch belongs to the training epoch before
    it). ``in_batch``: at a training batch, whose epoch has not been counted yet."""
    history = learner.cbstate.history.get(_TRAINING)
    if history is None:
        return 0, 0
    return history.steps, history.epochs + (1 if in_batch else 0)
