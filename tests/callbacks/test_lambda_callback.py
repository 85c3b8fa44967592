from __future__ import annotations

import functools
from typing import Any

import pytest

from cadence import READ, WRITE, CancelFit, DeclarationError, ProtectedAccessError, Recorder
from cadence.callbacks.lambda_callback import LambdaCallback
from cadence.events import BatchBegin, BatchEnd, EpochEnd, Event, FitBegin
from cadence.phases import Phase, TrainingPhase, ValidationPhase
from cadence.testing import make_test_learner


def test_runs_at_its_event_in_its_phase_only() -> None:
    seen: list[tuple[str, str]] = []

    def note(event: Event, phase: Phase, learner: Any) -> None:
        seen.append((type(event).__name__, type(phase).__name__))

    learner = make_test_learner(LambdaCallback(note, BatchBegin, phase=TrainingPhase), n_batches=3)
    learner.fit(2)
    assert seen == [("BatchBegin", "TrainingPhase")] * 6


def test_default_phase_means_every_phase() -> None:
    phases: list[type[Phase]] = []
    callback = LambdaCallback(lambda e, p, l: phases.append(type(p)), EpochEnd)
    make_test_learner(callback).fit(1)
    assert phases == [TrainingPhase, ValidationPhase]


def test_handles_subclasses_of_event_and_phase() -> None:
    class SlowTraining(TrainingPhase):
        pass

    count = 0

    def bump(event: Event, phase: Phase, learner: Any) -> None:
        nonlocal count
        count += 1

    learner = make_test_learner(LambdaCallback(bump, Event, phase=TrainingPhase), n_batches=2)
    learner.epoch(SlowTraining(), learner.data[0])  # type: ignore[index]
    # EpochBegin, 2 x (BatchBegin, LossBegin, BackwardBegin, BackwardEnd, BatchEnd), EpochEnd
    assert count == 12


def test_state_access_is_enforced_with_the_callbacks_name() -> None:
    def peek(event: Event, phase: Phase, learner: Any) -> None:
        learner.batch.loss

    learner = make_test_learner(LambdaCallback(peek, BatchEnd))
    with pytest.raises(ProtectedAccessError, match=r"Learner\.batch\.loss disallowed") as info:
        learner.fit(1)
    assert 'LambdaCallback.state_access, e.g. {"batch.loss": READ}' in str(info.value)
    assert "Raised by LambdaCallback.peek while handling BatchEnd in TrainingPhase." in info.value.__notes__


def test_declared_access_is_used_for_ordering() -> None:
    def read_history(event: Event, phase: Phase, learner: Any) -> None:
        assert learner.cbstate.history[phase].steps_in_epoch >= 1

    reader = LambdaCallback(read_history, BatchEnd, state_access={"cbstate.history": READ})
    learner = make_test_learner(reader, Recorder(), n_batches=2)
    assert learner.explain(BatchEnd, TrainingPhase).splitlines()[1:3] == [
        "  1. Recorder.batch_end",
        "  2. LambdaCallback.read_history",
    ]
    learner.fit(1)


def test_run_after_is_declared_per_instance() -> None:
    def after_recorder(event: Event, phase: Phase, learner: Any) -> None:
        pass

    callback = LambdaCallback(after_recorder, BatchEnd, run_after=(Recorder,))
    learner = make_test_learner(callback, Recorder())
    assert learner.explain(BatchEnd, TrainingPhase).splitlines()[1:] == [
        "  1. Recorder.batch_end",
        "  2. LambdaCallback.after_recorder",
        "       after Recorder: LambdaCallback.run_after includes Recorder",
    ]
    assert LambdaCallback(print, FitBegin).run_after == ()


def test_signals_pass_through() -> None:
    def stop(event: Event, phase: Phase, learner: Any) -> None:
        raise CancelFit("enough")

    result = make_test_learner(LambdaCallback(stop, BatchEnd)).fit(3).stopped
    assert isinstance(result, CancelFit)
    assert result.origin == "LambdaCallback.stop"


@pytest.mark.parametrize(
    ("fn", "name"),
    [
        (lambda e, p, l: None, "run"),
        (functools.partial(print), "run"),
        (print, "print"),
    ],
)
def test_handler_name(fn: Any, name: str) -> None:
    callback = LambdaCallback(fn, BatchEnd)
    assert callback.handler_for(BatchEnd, TrainingPhase) == name
    assert getattr(callback, name) is fn


def test_names_that_clash_with_attributes_fall_back_to_run() -> None:
    def init(event: Event, phase: Phase, learner: Any) -> None:
        pass

    callback = LambdaCallback(init, BatchEnd)
    assert callback.handler_for(BatchEnd, ValidationPhase) == "run"
    assert callback.init.__func__ is LambdaCallback.init  # type: ignore[attr-defined]


def test_handlers_describe_the_instance() -> None:
    callback = LambdaCallback(print, BatchEnd, phase=TrainingPhase)
    (handler,) = callback.handlers
    assert (handler.event, handler.phase, handler.name) == (BatchEnd, TrainingPhase, "print")
    assert callback.handler_for(BatchEnd, ValidationPhase) is None
    assert callback.handler_for(BatchBegin, TrainingPhase) is None
    assert LambdaCallback.handlers == ()
    assert repr(callback) == "LambdaCallback(print, BatchEnd, phase=TrainingPhase)"


def test_fn_must_be_callable() -> None:
    with pytest.raises(TypeError, match=r"expects a function fn\(event, phase, learner\); got int"):
        LambdaCallback(3, BatchEnd)  # type: ignore[arg-type]


def test_event_must_be_a_class() -> None:
    with pytest.raises(TypeError, match=r"event=\.\.\.\) expects the class, not an instance: pass BatchEnd, not BatchEnd\(\)"):
        LambdaCallback(print, BatchEnd())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"expects an Event class such as BatchEnd; got 'BatchEnd'"):
        LambdaCallback(print, "BatchEnd")  # type: ignore[arg-type]


def test_phase_must_be_a_class() -> None:
    with pytest.raises(TypeError, match=r"pass TrainingPhase, not TrainingPhase\(\)"):
        LambdaCallback(print, BatchEnd, phase=TrainingPhase())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"expects a Phase class such as TrainingPhase; got BatchEnd"):
        LambdaCallback(print, BatchEnd, phase=BatchEnd)  # type: ignore[arg-type]


def test_state_access_is_validated_at_construction_naming_the_function() -> None:
    def log(event: Event, phase: Phase, learner: Any) -> None:
        pass

    with pytest.raises(DeclarationError, match=r"LambdaCallback\(log\)\.state_access declares 'batch\.los', which is not a batch field"):
        LambdaCallback(log, BatchEnd, state_access={"batch.los": READ})
    with pytest.raises(DeclarationError, match=r"use READ or WRITE"):
        LambdaCallback(log, BatchEnd, state_access={"batch.loss": "read"})
    LambdaCallback(log, BatchEnd, state_access={"cbstate.mine": WRITE})
