"""Recorder: counts epochs and steps per phase in ``cbstate.history``."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from cadence import WRITE, Callback, on
from cadence.events import BatchEnd, EpochBegin, EpochEnd, Event
from cadence.phases import Phase

__all__ = ["History", "Recorder"]


@dataclass(slots=True)
class History:
    """Progress of one phase.

    Attributes:
        epochs: Epochs completed (cancelled ones included: their ``EpochEnd`` fired).
        steps: Batches completed over all epochs (cancelled batches are not counted).
        steps_in_epoch: Batches completed in the current (or last) epoch.
    """

    epochs: int = 0
    steps: int = 0
    steps_in_epoch: int = 0


class Recorder(Callback):
    """Keeps a ``History`` per phase in ``cbstate.history`` (a dict keyed by phase instance).

    Example:
        >>> from cadence.phases import TrainingPhase
        >>> from cadence.testing import make_test_learner
        >>> learner = make_test_learner(Recorder(), n_batches=4)
        >>> _ = learner.fit(2)
        >>> learner.cbstate.history[TrainingPhase()]
        History(epochs=2, steps=8, steps_in_epoch=4)
    """

    state_access = {"cbstate.history": WRITE}

    def init(self, learner: Any) -> None:
        if "history" not in learner.cbstate:
            learner.cbstate.history = defaultdict(History)

    @on(EpochBegin)
    def epoch_begin(self, event: Event, phase: Phase, learner: Any) -> None:
        learner.cbstate.history[phase].steps_in_epoch = 0

    @on(BatchEnd)
    def batch_end(self, event: Event, phase: Phase, learner: Any) -> None:
        history = learner.cbstate.history[phase]
        history.steps += 1
        history.steps_in_epoch += 1

    @on(EpochEnd)
    def epoch_end(self, event: Event, phase: Phase, learner: Any) -> None:
        learner.cbstate.history[phase].epochs += 1
