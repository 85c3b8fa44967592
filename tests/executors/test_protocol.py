"""The executor protocol and SerialExecutor (ThreadedExecutor: test_threaded_executor.py)."""

from __future__ import annotations

from typing import Any

import pytest
from helpers import RecordingExecutor

from cadence import WRITE, Callback, CancelBatch, Recorder, SerialExecutor, on
from cadence.events import BatchBegin, BatchEnd, Event, FitBegin, FitEnd
from cadence.executors import Executor, ThreadedExecutor, add_handler_note
from cadence.phases import Phase, TrainingPhase
from cadence.testing import make_test_learner


class Step(Callback):
    """Appends its name to a shared list at BatchEnd; optionally raises instead."""

    def __init__(self, name: str, calls: list[str], error: Exception | None = None) -> None:
        self.name, self.calls, self.error = name, calls, error

    @on(BatchEnd)
    def batch_end(self, event: Event, phase: Phase, learner: Any) -> None:
        if self.error is not None:
            raise self.error
        self.calls.append(self.name)


class Writer(Step):
    state_access = {"cbstate.w": WRITE}


def test_serial_executor_runs_handlers_in_plan_order() -> None:
    calls: list[str] = []
    learner = make_test_learner(Step("a", calls), Step("b", calls), Step("c", calls))
    learner.fire(BatchEnd(), TrainingPhase())
    assert calls == ["a", "b", "c"]


def test_a_signal_stops_the_remaining_handlers_and_names_its_origin() -> None:
    calls: list[str] = []
    learner = make_test_learner(Step("a", calls), Writer("b", calls, CancelBatch("skip")), Step("c", calls))
    with pytest.raises(CancelBatch) as info:
        learner.fire(BatchEnd(), TrainingPhase())
    assert info.value.origin == "Writer.batch_end"
    assert calls == ["a"]


def test_an_error_gets_a_note_naming_handler_event_and_phase() -> None:
    calls: list[str] = []
    learner = make_test_learner(Step("a", calls), Writer("b", calls, ZeroDivisionError("oops")))
    with pytest.raises(ZeroDivisionError, match="oops") as info:
        learner.fire(BatchEnd(), TrainingPhase())
    assert info.value.__notes__ == ["Raised by Writer.batch_end while handling BatchEnd in TrainingPhase."]


# Every loop that runs a plan in order: SerialExecutor.run, and ThreadedExecutor's timed runs
# (a plan's first calls) and inline runs (later calls of a plan whose handlers are cheap).
SERIAL_LOOPS = [(SerialExecutor, 0), (ThreadedExecutor, 0), (ThreadedExecutor, 2 * ThreadedExecutor.warmup)]


@pytest.mark.parametrize(("make_executor", "calls_before"), SERIAL_LOOPS, ids=["serial", "timed", "inline"])
@pytest.mark.parametrize("failure", [ZeroDivisionError, CancelBatch])
def test_every_serial_loop_reports_a_failure_alike(
    make_executor: type[Executor], calls_before: int, failure: type[Exception]
) -> None:
    calls: list[str] = []
    failing = Writer("b", calls)
    learner = make_test_learner(Step("a", calls), failing, Step("c", calls), executor=make_executor())
    for _ in range(calls_before):
        learner.fire(BatchEnd(), TrainingPhase())
    calls.clear()
    failing.error = failure("x")
    with pytest.raises(failure) as info:
        learner.fire(BatchEnd(), TrainingPhase())
    assert calls == ["a"]
    if isinstance(info.value, CancelBatch):
        assert info.value.origin == "Writer.batch_end" and not hasattr(info.value, "__notes__")
    else:
        assert info.value.__notes__ == ["Raised by Writer.batch_end while handling BatchEnd in TrainingPhase."]


class FailingAtFitEnd(Callback):
    @on(FitEnd)
    def fit_end(self, event: Event, phase: Phase, learner: Any) -> None:
        raise ZeroDivisionError("late")


@pytest.mark.parametrize("executor", [SerialExecutor(), ThreadedExecutor()])
def test_a_failure_at_fit_end_gets_the_same_note(executor: Executor) -> None:
    learner = make_test_learner(FailingAtFitEnd(), executor=executor, n_batches=1)
    with pytest.raises(ZeroDivisionError, match="late") as info:
        learner.fit(1)
    assert info.value.__notes__ == ["Raised by FailingAtFitEnd.fit_end while handling FitEnd in Phase."]


def test_add_handler_note_names_the_handler_at_a_position() -> None:
    learner = make_test_learner(Recorder())
    plan = learner._plans[TrainingPhase][BatchEnd]
    assert plan is not None
    error = RuntimeError("x")
    add_handler_note(error, plan, 0, BatchEnd(), TrainingPhase())
    assert error.__notes__ == ["Raised by Recorder.batch_end while handling BatchEnd in TrainingPhase."]


def test_fit_level_plans_reach_the_executor_even_when_empty() -> None:
    executor = RecordingExecutor()
    learner = make_test_learner(executor=executor, n_batches=2)
    learner.fit(1)
    assert (FitBegin, Phase, 0) in executor.runs and (FitEnd, Phase, 0) in executor.runs
    # Empty batch- and epoch-level plans never reach it.
    assert all(event in (FitBegin, FitEnd) for event, _, _ in executor.runs)


@pytest.mark.parametrize("executor", [SerialExecutor(), ThreadedExecutor(), RecordingExecutor()])
def test_built_in_and_custom_executors_satisfy_the_protocol(executor: object) -> None:
    assert isinstance(executor, Executor)


def test_a_custom_executor_survives_callback_changes() -> None:
    executor = RecordingExecutor()
    learner = make_test_learner(Recorder(), executor=executor)
    learner.add_callback(Step("a", []))
    learner.replace_callback(Recorder())
    learner.remove_callback(Step)
    assert learner.executor is executor


def test_an_object_without_run_is_refused_as_executor() -> None:
    message = r"expects an object with run\(plan, event, phase\), such as SerialExecutor\(\)"
    with pytest.raises(TypeError, match=message):
        make_test_learner(executor=object())


def test_executors_have_readable_reprs() -> None:
    assert repr(SerialExecutor()) == "SerialExecutor()"
    assert repr(ThreadedExecutor(max_workers=3)) == "ThreadedExecutor(max_workers=3, inline_below=0.0001)"


def test_batch_begin_plans_are_absent_when_nothing_handles_them() -> None:
    executor = RecordingExecutor()
    learner = make_test_learner(Recorder(), executor=executor, n_batches=1)
    learner.fit(1)
    assert not any(event is BatchBegin for event, _, _ in executor.runs)
