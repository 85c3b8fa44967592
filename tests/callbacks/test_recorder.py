"""Recorder: per-phase History in cbstate.history."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from cadence import WRITE, CancelBatch, Callback, History, Recorder, on
from cadence.events import BatchBegin, Event
from cadence.phases import Phase, TrainingPhase, ValidationPhase
from cadence.testing import make_test_learner


def test_history_counts_epochs_and_steps_per_phase() -> None:
    learner = make_test_learner(Recorder(), n_batches=4)
    learner.fit(3, data=(learner.data[0], learner.data[0][:2]))  # type: ignore[index]
    history = learner.cbstate.history
    assert history[TrainingPhase()] == History(epochs=3, steps=12, steps_in_epoch=4)
    assert history[ValidationPhase()] == History(epochs=3, steps=6, steps_in_epoch=2)
    assert set(history) == {TrainingPhase(), ValidationPhase()}


def test_steps_in_epoch_restarts_each_epoch() -> None:
    counts: list[int] = []

    class Reader(Callback):
        state_access = {"cbstate.history": WRITE}

        @on(BatchBegin, phase=TrainingPhase)
        def read(self, event: Event, phase: Phase, learner: Any) -> None:
            counts.append(learner.cbstate.history[phase].steps_in_epoch)

    # Recorder first: resolve the write/write pair by order.
    class After(Reader):
        run_after = (Recorder,)

    learner = make_test_learner(After(), Recorder(), n_batches=3)
    learner.fit(2)
    assert counts == [0, 1, 2, 0, 1, 2]


def test_cancelled_batches_are_not_counted() -> None:
    class Skipper(Callback):
        @on(BatchBegin, phase=TrainingPhase)
        def skip(self, event: Event, phase: Phase, learner: Any) -> None:
            raise CancelBatch()

    learner = make_test_learner(Skipper(), Recorder(), n_batches=2)
    learner.fit(1)
    assert learner.cbstate.history[TrainingPhase()] == History(epochs=1, steps=0, steps_in_epoch=0)


def test_history_is_a_default_dict_of_history() -> None:
    learner = make_test_learner(Recorder())
    assert isinstance(learner.cbstate.history, defaultdict)
    assert learner.cbstate.history[ValidationPhase()] == History()


def test_replacing_the_recorder_keeps_the_history() -> None:
    learner = make_test_learner(Recorder(), n_batches=2)
    learner.fit(1)
    history = learner.cbstate.history
    learner.replace_callback(Recorder())
    learner.fit(1)
    assert learner.cbstate.history is history
    assert history[TrainingPhase()].epochs == 2


def test_history_is_slotted_and_small() -> None:
    assert not hasattr(History(), "__dict__")
    assert Recorder.state_access == {"cbstate.history": WRITE}
