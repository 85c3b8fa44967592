"""Events: the fixed points of a phase at which callbacks run.

Events are classes; a handler registered for an event class also handles its subclasses.
The learner fires instances. Batch-level events are fired as shared instances (one per class)
so that dispatch allocates nothing; ``FitBegin`` and ``EpochBegin`` carry a little information.

Training batch, in order: ``BatchBegin`` → forward → ``LossBegin`` → loss → ``BackwardBegin`` →
backward → ``BackwardEnd`` → optimizer step → ``BatchEnd``. Validation batch: ``BatchBegin`` →
forward → ``LossBegin`` → loss → ``BatchEnd``. ``EpochBegin``/``EpochEnd`` surround each phase
epoch and ``FitBegin``/``FitEnd`` each call of ``Learner.fit``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

__all__ = [
    "BackwardBegin",
    "BackwardEnd",
    "BatchBegin",
    "BatchEnd",
    "EpochBegin",
    "EpochEnd",
    "Event",
    "FitBegin",
    "FitEnd",
    "LossBegin",
]


class Event:
    """Base class of all events.

    Extending:
        1. Subclass ``Event`` (or a built-in event, so that its handlers also run for yours).
        2. Add the class to the ``events`` of the phase that fires it.
        3. Fire it from that phase with ``learner.fire(YourEvent(), self)``.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class FitBegin(Event):
    """Fired once at the start of ``Learner.fit``, with the plain ``Phase()``.

    Attributes:
        n_epochs: The number of epochs ``fit`` was asked to run.
        data: The ``(train, valid)`` pair this fit runs on (``valid`` may be None): the data
            passed to ``fit`` if any, else the learner's.
        callbacks: The learner's callbacks in run order (every ``run_after`` and every
            producer of a ``cbstate`` entry before its readers; list order otherwise), for
            loggers of the run's configuration.
        resume: The ``resume=`` that ``fit`` was given (None: a fresh run). A checkpoint's
            state is restored after ``FitBegin``; with ``"latest"`` and no checkpoint yet,
            the run starts from the beginning.
    """

    __slots__ = ("n_epochs", "data", "callbacks", "resume")

    def __init__(
        self,
        n_epochs: int = 0,
        data: tuple[Iterable[Any], Iterable[Any] | None] | None = None,
        callbacks: tuple[Any, ...] = (),
        resume: str | os.PathLike[str] | None = None,
    ) -> None:
        self.n_epochs = n_epochs
        self.data = data
        self.callbacks = callbacks
        self.resume = resume


class FitEnd(Event):
    """Fired once when ``Learner.fit`` ends, however it ends (normally, cancelled or by an
    exception), with the plain ``Phase()``. Close files and flush loggers here."""

    __slots__ = ()


class EpochBegin(Event):
    """Fired at the start of each phase epoch.

    Attributes:
        data: The iterable of batches this epoch runs over (use ``len`` on it where it has one).
    """

    __slots__ = ("data",)

    def __init__(self, data: Iterable[Any] | None = None) -> None:
        self.data = data


class EpochEnd(Event):
    """Fired at the end of each phase epoch, also after ``CancelEpoch``."""

    __slots__ = ()


class BatchBegin(Event):
    """Fired before the forward pass; ``batch.x`` and ``batch.y`` are set and may be rewritten."""

    __slots__ = ()


class LossBegin(Event):
    """Fired after the forward pass; ``batch.y_pred`` is set and may be rewritten."""

    __slots__ = ()


class BackwardBegin(Event):
    """Fired before the backward pass (training only); ``batch.loss`` is set and may be
    rewritten (for example scaled)."""

    __slots__ = ()


class BackwardEnd(Event):
    """Fired after the backward pass (training only), before the optimizer step: gradients are
    in the parameters (inspect or clip them here) and ``batch.loss`` is detached."""

    __slots__ = ()


class BatchEnd(Event):
    """Fired at the end of every batch that was not cancelled."""

    __slots__ = ()
