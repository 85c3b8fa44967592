"""InstalledCallbacks: every change committed whole or not at all, in the one plans dict that
Learner.fire looks plans up in."""

from __future__ import annotations

from typing import Any

import pytest

from cadence import READ, WRITE, Callback, ConflictError, Recorder, on
from cadence.events import BatchEnd, Event
from cadence.phases import Phase, TrainingPhase
from cadence.testing import make_test_learner


class Writer(Callback):
    state_access = {"batch.loss": WRITE}

    @on(BatchEnd, phase=TrainingPhase)
    def write(self, event: Event, phase: Phase, learner: Any) -> None: ...


class BrokenInit(Callback):
    state_access = {"cbstate.seen": WRITE}

    def init(self, learner: Any) -> None:
        raise RuntimeError("init failed")


class Reader(Callback):
    state_access = {"batch.loss": READ}

    @on(BatchEnd, phase=TrainingPhase)
    def read(self, event: Event, phase: Phase, learner: Any) -> None: ...


def test_a_refused_change_leaves_the_callbacks_and_the_plans_as_they_were() -> None:
    learner = make_test_learner(Writer(), Recorder())
    installed, plans = learner._installed, learner._plans
    before = (learner.callbacks, {kind: dict(p) for kind, p in plans.items()}, learner.explain())
    with pytest.raises(ConflictError):  # a second writer of batch.loss, unordered
        learner.add_callback(Writer())
    with pytest.raises(RuntimeError, match="init failed") as caught:  # built, then init fails
        learner.add_callback(BrokenInit())
    assert caught.value.__notes__ == ["Raised by BrokenInit.init; the learner's callbacks are unchanged."]
    assert (learner.callbacks, {kind: dict(p) for kind, p in plans.items()}, learner.explain()) == before
    learner.add_callback(Reader())
    # The same dict throughout: fire() holds it, and every change updates it in place.
    assert learner._plans is plans is installed.plans
    assert plans[TrainingPhase][BatchEnd].labels == ("Writer.write", "Recorder.batch_end", "Reader.read")  # type: ignore[union-attr]


def test_saved_plans_come_back_without_building_again() -> None:
    learner = make_test_learner(Writer(), Recorder())
    installed = learner._installed
    saved = installed.saved()
    plan = installed.plans[TrainingPhase][BatchEnd]
    installed.install([Recorder()], joining=[])
    assert installed.plans[TrainingPhase][BatchEnd] is not plan
    installed.restore(saved)
    assert installed.plans[TrainingPhase][BatchEnd] is plan and installed.callbacks == saved.callbacks
