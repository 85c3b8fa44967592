"""``LoggerCallback``: what the callbacks that write to backends have in common.

They attach their backends at ``FitBegin`` (a fresh fit into an earlier run's logs is refused
there, before any training), flush them at the end of every epoch (after its validation,
when there is one; a backend that several callbacks share is flushed once, since a flush
with nothing new costs nothing), and detach them at ``FitEnd`` (the last callback to detach a
shared backend closes it), on every way a fit ends.
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
from cadence.callback import Callback, on
from cadence.events import EpochEnd, Event, FitBegin, FitEnd
from cadence.loggers.backend import Backend
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

    @on(FitBegin)
    def fit_begin(self, event: FitBegin, phase: Phase, learner: Any) -> None:
        run = learner.cbstate.run if any(b.needs_run for b in self.backends) else None
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


def position(learner: Any, *, in_batch: bool = False) -> tuple[int, int]:
    """``(step, epoch)`` on the run's one step axis: training steps done, and the training
    epoch they belong to (from 1; a validation epoch belongs to the training epoch before
    it). ``in_batch``: at a training batch, whose epoch has not been counted yet."""
    history = learner.cbstate.history.get(_TRAINING)
    if history is None:
        return 0, 0
    return history.steps, history.epochs + (1 if in_batch else 0)
