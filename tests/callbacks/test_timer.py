from __future__ import annotations

import time
from typing import Any

import pytest

from cadence import CancelFit, Callback, Recorder, SerialExecutor, on
from cadence.callbacks.lambda_callback import LambdaCallback
from cadence.callbacks.timer import CallbackTimer, HandlerTime
from cadence.events import BatchEnd, EpochEnd, Event, FitBegin, FitEnd
from cadence.graph import Plan
from cadence.phases import Phase, TrainingPhase
from cadence.testing import make_test_learner


def busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


class Slow(Callback):
    @on(BatchEnd, phase=TrainingPhase)
    def crawl(self, event: Event, phase: Phase, learner: Any) -> None:
        busy(0.002)


def by_key(timer: CallbackTimer) -> dict[tuple[str, str, str], HandlerTime]:
    return {(t.handler, t.event, t.phase): t for t in timer.totals()}


def test_time_goes_to_the_handler_that_spent_it() -> None:
    timer = CallbackTimer(print_report=False)
    make_test_learner(Recorder(), Slow(), executor=timer, n_batches=4).fit(1)
    rows = by_key(timer)
    slow = rows[("Slow.crawl", "BatchEnd", "TrainingPhase")]
    fast = rows[("Recorder.batch_end", "BatchEnd", "TrainingPhase")]
    assert slow.calls == fast.calls == 4
    assert slow.total_ns >= 4 * 2_000_000
    assert fast.total_ns < slow.total_ns / 10
    assert timer.totals()[0] is not fast and timer.totals()[0].handler == "Slow.crawl"
    assert slow.total_ms == slow.total_ns / 1e6 and slow.mean_us == slow.total_ns / 4e3


def test_counts_every_handler_at_every_event_and_phase() -> None:
    timer = CallbackTimer(print_report=False)
    make_test_learner(Recorder(), executor=timer, n_batches=3).fit(2)
    calls = {key: t.calls for key, t in by_key(timer).items()}
    assert calls == {
        (f"Recorder.{name}", event, phase): n
        for phase in ("TrainingPhase", "ValidationPhase")
        for name, event, n in (("epoch_begin", "EpochBegin", 2), ("batch_end", "BatchEnd", 6), ("epoch_end", "EpochEnd", 2))
    }


def test_totals_start_afresh_at_each_fit() -> None:
    timer = CallbackTimer(print_report=False)
    learner = make_test_learner(Recorder(), executor=timer, n_batches=2)
    learner.fit(3)
    learner.fit(1)
    assert by_key(timer)[("Recorder.batch_end", "BatchEnd", "TrainingPhase")].calls == 2
    timer.reset()
    assert timer.totals() == []


def test_survives_callbacks_being_added() -> None:
    timer = CallbackTimer(print_report=False)
    learner = make_test_learner(Recorder(), executor=timer, n_batches=2)
    learner.add_callback(Slow())
    learner.fit(1)
    assert learner.executor is timer
    assert by_key(timer)[("Slow.crawl", "BatchEnd", "TrainingPhase")].calls == 2


def test_prints_a_table_at_fit_end(capsys: pytest.CaptureFixture[str]) -> None:
    make_test_learner(Recorder(), Slow(), executor=CallbackTimer(), n_batches=2).fit(1)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("CallbackTimer: ") and lines[0].endswith(" ms in 10 handler calls")
    assert lines[1].split() == ["handler", "event", "phase", "calls", "total", "ms", "mean", "µs"]
    assert lines[2].split()[:4] == ["Slow.crawl", "BatchEnd", "TrainingPhase", "2"]
    assert len(lines) == 2 + 7


def test_prints_a_rich_table_on_a_terminal(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "120")
    make_test_learner(Slow(), executor=CallbackTimer(), n_batches=2).fit(1)
    out = capsys.readouterr().out
    assert "┃" in out and "Slow.crawl" in out and "mean µs" in out


def test_print_report_false_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    timer = CallbackTimer(print_report=False)
    make_test_learner(Recorder(), executor=timer).fit(1)
    assert capsys.readouterr().out == ""
    assert timer.report().splitlines()[0].startswith("CallbackTimer: ")


def test_signals_and_errors_keep_their_origin_and_are_timed() -> None:
    def stop(event: Event, phase: Phase, learner: Any) -> None:
        raise CancelFit("enough")

    timer = CallbackTimer(print_report=False)
    result = make_test_learner(LambdaCallback(stop, BatchEnd), executor=timer).fit(2).stopped
    assert isinstance(result, CancelFit) and result.origin == "LambdaCallback.stop"
    assert by_key(timer)[("LambdaCallback.stop", "BatchEnd", "TrainingPhase")].calls == 1

    def fail(event: Event, phase: Phase, learner: Any) -> None:
        raise RuntimeError("boom")

    timer = CallbackTimer(print_report=False)
    with pytest.raises(RuntimeError, match="boom") as info:
        make_test_learner(LambdaCallback(fail, EpochEnd), executor=timer).fit(1)
    assert "Raised by LambdaCallback.fail while handling EpochEnd in TrainingPhase." in info.value.__notes__
    assert by_key(timer)[("LambdaCallback.fail", "EpochEnd", "TrainingPhase")].calls == 1


def test_wraps_any_executor_with_one_timed_copy_per_plan() -> None:
    seen: dict[int, Plan] = {}

    class Spy(SerialExecutor):
        def run(self, plan: Plan, event: Event, phase: Phase) -> None:
            seen.setdefault(id(plan), plan)
            super().run(plan, event, phase)

    timer = CallbackTimer(Spy(), print_report=False)
    learner = make_test_learner(Recorder(), executor=timer, n_batches=4)
    learner.fit(1)
    # one plan per (event, phase) that fired: FitBegin, FitEnd and 3 per phase
    assert len(seen) == 2 + 3 + 3
    timed = next(p for p in seen.values() if p.event is BatchEnd and p.phase is TrainingPhase)
    assert timed.labels == ("Recorder.batch_end",) and timed.cache == {}
    assert {p.event for p in seen.values()} >= {FitBegin, FitEnd}
    assert repr(timer) == "CallbackTimer(SerialExecutor())"


def test_plans_keep_one_timed_copy_over_many_fits() -> None:
    plans: dict[int, Plan] = {}
    timed: dict[int, Plan] = {}

    class Inner(SerialExecutor):
        def run(self, plan: Plan, event: Event, phase: Phase) -> None:
            timed.setdefault(id(plan), plan)
            super().run(plan, event, phase)

    timer = CallbackTimer(Inner(), print_report=False)

    class Outer:
        def run(self, plan: Plan, event: Event, phase: Phase) -> None:
            plans.setdefault(id(plan), plan)
            timer.run(plan, event, phase)

    learner = make_test_learner(Recorder(), executor=Outer(), n_batches=2)
    sizes = []
    for _ in range(5):
        learner.fit(1)
        sizes.append(sum(len(plan.cache) for plan in plans.values()))
        assert by_key(timer)[("Recorder.batch_end", "BatchEnd", "TrainingPhase")].calls == 2
    assert sizes == [len(plans)] * 5  # one timed copy per plan, made at the first fit
    assert len(timed) == len(plans)  # the inner executor is handed the same copies every fit


def test_inner_must_be_an_executor() -> None:
    with pytest.raises(TypeError, match=r"CallbackTimer\(inner=\.\.\.\) expects an executor with run\(plan, event, phase\), such as SerialExecutor\(\); got str"):
        CallbackTimer("serial")  # type: ignore[arg-type]
