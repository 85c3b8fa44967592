"""Recorder: per-phase History in cbstate.history."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import pytest

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


@dataclass(frozen=True)
class GanPhase(TrainingPhase):
    mode: str = "d"


@dataclass(frozen=True)
class NeedsMode(TrainingPhase):
    mode: str


def test_two_phases_of_one_class_with_different_fields_cannot_be_saved_and_the_error_says_what_to_do() -> None:
    recorder = Recorder()
    learner = make_test_learner(recorder)
    learner.cbstate.history[GanPhase("d")].steps = 1
    learner.cbstate.history[GanPhase("g")].steps = 1
    with pytest.raises(ValueError, match=r"Recorder.state_dict: cbstate.history has two GanPhase phases with different fields, GanPhase\(mode='d'\) and GanPhase\(mode='g'\); a checkpoint keeps one history per phase class, restored to GanPhase\(\). Give each variant a class of its own whose fields default to its values, e.g. @dataclass\(frozen=True\) class OtherGanPhase\(GanPhase\): mode: str = 'g'; and run OtherGanPhase\(\)."):
        recorder.state_dict()


def test_a_phase_that_needs_arguments_cannot_be_restored_and_the_error_says_what_to_do() -> None:
    key = f"{NeedsMode.__module__}.{NeedsMode.__qualname__}"
    with pytest.raises(ValueError, match=rf"Recorder.load_state_dict: the history names the phase {key}, which cannot be created without arguments \(.*missing 1 required positional argument: 'mode'\); Recorder restores each phase's history to NeedsMode\(\). Give every field of NeedsMode a default value."):
        Recorder().load_state_dict({"history": {key: [1, 2, 3]}})
