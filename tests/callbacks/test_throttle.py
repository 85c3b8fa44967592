from __future__ import annotations

import threading
from typing import Any

import pytest

from cadence import (
    READ,
    WRITE,
    CancelBatch,
    Callback,
    ConflictError,
    DeclarationError,
    NoConflict,
    Recorder,
    RunFirst,
    on,
)
from cadence.callbacks.lambda_callback import LambdaCallback
from cadence.callbacks.precision import MixedPrecision
from cadence.callbacks.throttle import Throttled, throttle
from cadence.events import BatchBegin, BatchEnd, EpochBegin, EpochEnd, Event, FitBegin
from cadence.executors import ThreadedExecutor
from cadence.phases import Phase, TrainingPhase, ValidationPhase
from cadence.testing import make_test_learner

TRAIN = TrainingPhase()


def steps(learner: Any, phase: Phase = TRAIN) -> int:
    return int(learner.cbstate.history[phase].steps)


@pytest.mark.parametrize(("every", "expected"), [(1, 16), (2, 8), (5, 3), (16, 1), (17, 0)])
def test_every_runs_on_every_nth_firing(every: int, expected: int) -> None:
    learner = make_test_learner(throttle(Recorder(), BatchEnd, every=every), n_batches=16)
    learner.epoch(TRAIN, learner.data[0])  # type: ignore[index]
    assert steps(learner) == expected


def test_counts_per_phase_and_across_epochs() -> None:
    fired: list[tuple[str, int]] = []
    count = {"train": 0, "valid": 0}

    def note(event: Event, phase: Phase, learner: Any) -> None:
        fired.append((phase.name, count[phase.name]))

    def tick(event: Event, phase: Phase, learner: Any) -> None:
        count[phase.name] += 1

    learner = make_test_learner(
        LambdaCallback(tick, BatchEnd), throttle(LambdaCallback(note, BatchEnd), BatchEnd, every=3), n_batches=4
    )
    learner.fit(2)
    # 8 batches per phase over two epochs: the 3rd and 6th of each phase.
    assert fired == [("train", 3), ("valid", 3), ("train", 6), ("valid", 6)]


def test_other_handlers_are_not_throttled() -> None:
    learner = make_test_learner(throttle(Recorder(), BatchEnd, every=4), n_batches=8)
    learner.fit(3)
    history = learner.cbstate.history[TRAIN]
    assert (history.epochs, history.steps) == (3, 6)


def test_seconds_runs_first_then_at_most_once_per_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([0.0, 0.5, 1.0, 1.2, 2.1, 2.2, 5.0])
    monkeypatch.setattr("cadence.callbacks.throttle._clock", lambda: next(clock))
    learner = make_test_learner(throttle(Recorder(), BatchEnd, seconds=1), n_batches=7)
    learner.epoch(TRAIN, learner.data[0])  # type: ignore[index]
    # runs at 0.0, 1.0 (>= 1 s after 0.0), 2.1 and 5.0
    assert steps(learner) == 4


@pytest.mark.parametrize(("seconds", "expected"), [(0, 16), (60, 1)])
def test_seconds_with_a_real_clock(seconds: float, expected: int) -> None:
    learner = make_test_learner(throttle(Recorder(), BatchEnd, seconds=seconds), n_batches=16)
    learner.epoch(TRAIN, learner.data[0])  # type: ignore[index]
    assert steps(learner) == expected


def test_a_throttled_cancel_cancels_only_the_batches_it_runs_on() -> None:
    def cancel(event: Event, phase: Phase, learner: Any) -> None:
        raise CancelBatch()

    canceller = throttle(LambdaCallback(cancel, BatchBegin, phase=TrainingPhase), BatchBegin, every=2)
    learner = make_test_learner(canceller, Recorder(), n_batches=16)
    learner.epoch(TRAIN, learner.data[0])  # type: ignore[index]
    assert steps(learner) == 8


def test_is_an_instance_of_the_wrapped_type_and_labelled_by_it() -> None:
    throttled = throttle(Recorder(), BatchEnd, every=2)
    assert isinstance(throttled, Recorder) and isinstance(throttled, Throttled)
    assert type(throttled).__name__ == "Recorder"
    assert type(throttled) is type(throttle(Recorder(), EpochEnd, every=3))
    assert repr(throttled) == "throttle(Recorder(), BatchEnd, every=2)"
    assert repr(throttle(Recorder(), BatchEnd, seconds=0.5)) == "throttle(Recorder(), BatchEnd, seconds=0.5)"
    learner = make_test_learner(throttled)
    assert learner.get_callback(Recorder) is throttled
    assert "1. Recorder.batch_end[every 2]" in learner.explain(BatchEnd, TrainingPhase)
    assert "1. Recorder.epoch_end\n" in learner.explain(EpochEnd, TrainingPhase) + "\n"


def test_run_after_of_another_callback_orders_it_after_a_throttled_one() -> None:
    class Printer(Callback):
        run_after = (Recorder,)

        @on(BatchEnd)
        def show(self, event: Event, phase: Phase, learner: Any) -> None:
            pass

    learner = make_test_learner(Printer(), throttle(Recorder(), BatchEnd, every=2))
    assert learner.explain(BatchEnd, TrainingPhase).splitlines()[1:] == [
        "  1. Recorder.batch_end[every 2]",
        "  2. Printer.show",
        "       after Recorder: Printer.run_after includes Recorder",
    ]


def test_forwards_run_after_and_state_access() -> None:
    class Reader(Callback):
        state_access = {"cbstate.history": READ}
        run_after = (Recorder,)

        @on(EpochEnd)
        def read(self, event: Event, phase: Phase, learner: Any) -> None:
            learner.cbstate.history[phase]

    throttled = throttle(Reader(), EpochEnd, every=2)
    assert throttled.run_after == (Recorder,)
    assert throttled.state_access == {"cbstate.history": READ}
    learner = make_test_learner(throttled, Recorder())
    assert learner.explain(EpochEnd, TrainingPhase).splitlines()[1:3] == [
        "  1. Recorder.epoch_end",
        "  2. Reader.read[every 2]",
    ]
    learner.fit(2)


def test_init_is_forwarded() -> None:
    learner = make_test_learner(throttle(Recorder(), BatchEnd, every=2))
    assert "history" in learner.cbstate


class Writer(Callback):
    state_access = {"cbstate.flag": WRITE}

    def __init__(self, answer: Any = NotImplemented) -> None:
        self.answer = answer

    def init(self, learner: Any) -> None:
        learner.cbstate.flag = []

    @on(EpochEnd)
    def write(self, event: Event, phase: Phase, learner: Any) -> None:
        learner.cbstate.flag.append(self)

    def resolve_conflict(self, other: Callback) -> Any:
        return RunFirst(self) if self.answer == "first" else self.answer


def test_resolve_conflict_is_forwarded_and_run_first_names_the_wrapper() -> None:
    plain, wrapped = Writer(), Writer("first")
    throttled = throttle(wrapped, EpochEnd, every=1)
    learner = make_test_learner(plain, throttled, n_batches=1)
    learner.fit(1)
    assert learner.cbstate.flag == [wrapped, plain, wrapped, plain]
    assert throttle(Writer(NoConflict()), EpochEnd, every=1).resolve_conflict(plain) == NoConflict()


def test_a_conflict_names_the_wrapped_type() -> None:
    # The hint's code stays valid: isinstance(throttled, Writer) holds.
    with pytest.raises(ConflictError, match=r"(?s)between Writer#1 and Writer#2 .*isinstance\(other, Writer\)"):
        make_test_learner(Writer(), throttle(Writer(), EpochEnd, every=2))


def test_state_dict_keeps_the_counts() -> None:
    throttled = throttle(Recorder(), BatchEnd, every=3)
    learner = make_test_learner(throttled, n_batches=4)
    learner.epoch(TRAIN, learner.data[0])  # type: ignore[index]
    state = throttled.state_dict()
    assert state == {"callback": throttled.callback.state_dict(), "counts": {"BatchEnd/TrainingPhase": 4}}

    resumed = throttle(Recorder(), BatchEnd, every=3)
    resumed.load_state_dict(state)
    learner = make_test_learner(resumed, n_batches=2)
    learner.epoch(TRAIN, learner.data[0])  # type: ignore[index]
    assert steps(learner) == 2  # the restored step, and the 6th firing overall
    with pytest.raises(ValueError, match="Writer keeps no state but was given"):
        throttle(Writer("w"), EpochEnd, every=2).load_state_dict({"callback": {"x": 1}, "counts": {}})


def test_attributes_read_through_to_the_wrapped_callback() -> None:
    writer = Writer("first")
    throttled = throttle(writer, EpochEnd, every=2)
    assert throttled.callback is writer and throttled.answer == "first"
    with pytest.raises(AttributeError):
        throttled.missing


def test_thread_affinity_is_the_wrapped_callbacks() -> None:
    assert throttle(MixedPrecision(), BatchEnd, every=2).thread_affine is True
    assert throttle(Recorder(), BatchEnd, every=2).thread_affine is False


def test_a_throttled_thread_affine_callback_stays_on_the_learners_thread() -> None:
    seen: dict[str, set[int]] = {"pinned": set(), "free": set()}

    class Pinned(Callback):
        thread_affine = True

        @on(BatchEnd)
        def record(self, event: Event, phase: Phase, learner: Any) -> None:
            seen["pinned"].add(threading.get_ident())

    class Free(Callback):
        @on(BatchEnd)
        def record(self, event: Event, phase: Phase, learner: Any) -> None:
            seen["free"].add(threading.get_ident())

    class Free2(Free):
        pass

    pinned = throttle(Pinned(), BatchEnd, every=1)
    executor = ThreadedExecutor(inline_below=0)
    make_test_learner(pinned, Free(), Free2(), executor=executor, n_batches=8).fit(1)
    assert seen["pinned"] == {threading.get_ident()}
    assert seen["free"] - {threading.get_ident()}, "the free handlers did use worker threads"


def test_a_lambda_callback_can_be_throttled() -> None:
    calls: list[int] = []
    callback = LambdaCallback(lambda e, p, l: calls.append(1), BatchEnd, phase=ValidationPhase)
    make_test_learner(throttle(callback, BatchEnd, every=4), n_batches=8).fit(1)
    assert len(calls) == 2


def test_callback_must_be_an_instance() -> None:
    with pytest.raises(TypeError, match=r"expects a Callback instance, e.g. Recorder\(\); got the class Recorder"):
        throttle(Recorder, BatchEnd, every=2)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"expects a Callback instance, e.g. Recorder\(\); got int"):
        throttle(3, BatchEnd, every=2)  # type: ignore[arg-type]


def test_event_must_be_a_class() -> None:
    with pytest.raises(TypeError, match=r"expects the event class: pass BatchEnd, not an instance"):
        throttle(Recorder(), BatchEnd(), every=2)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"expects an Event class such as BatchEnd; got 'BatchEnd'"):
        throttle(Recorder(), "BatchEnd", every=2)  # type: ignore[arg-type]


@pytest.mark.parametrize(("kwargs", "which"), [({}, "neither"), ({"every": 2, "seconds": 1.0}, "both")])
def test_exactly_one_of_every_and_seconds(kwargs: dict[str, Any], which: str) -> None:
    with pytest.raises(ValueError, match=rf"takes exactly one of every=N .* and seconds=S .*; got {which}"):
        throttle(Recorder(), BatchEnd, **kwargs)


@pytest.mark.parametrize("every", [0, -1, 2.0, True])
def test_every_must_be_a_positive_int(every: Any) -> None:
    with pytest.raises(ValueError, match=r"every=N\) expects a positive int, e.g. every=10"):
        throttle(Recorder(), BatchEnd, every=every)


@pytest.mark.parametrize("seconds", [-1, float("nan"), "5", True])
def test_seconds_must_be_a_non_negative_number(seconds: Any) -> None:
    with pytest.raises(ValueError, match=r"seconds=S\) expects a number >= 0, e.g. seconds=30"):
        throttle(Recorder(), BatchEnd, seconds=seconds)


def test_the_event_must_be_handled() -> None:
    with pytest.raises(ValueError, match=r"would change nothing: Recorder has no handler for FitBegin\. It handles BatchEnd, EpochBegin, EpochEnd; throttle one of those"):
        throttle(Recorder(), FitBegin, every=2)
    throttle(Recorder(), Event, every=2)  # a base class of handled events is fine


def test_wrapped_declarations_are_still_validated_with_its_name() -> None:
    class Broken(Callback):
        state_access = {"batch.nope": READ}

        @on(BatchEnd)
        def go(self, event: Event, phase: Phase, learner: Any) -> None:
            pass

    with pytest.raises(DeclarationError, match=r"Broken\.state_access declares 'batch\.nope'"):
        make_test_learner(throttle(Broken(), BatchEnd, every=2))


def test_a_throttled_recorder_stands_in_for_the_default_one() -> None:
    learner = make_test_learner(throttle(Recorder(), BatchEnd, every=2), default_callbacks=True, n_batches=4)
    assert [type(cb).__name__ for cb in learner.callbacks] == [
        "Recorder", "Metrics", "ProgressPrinter", "MetricsPrinter", "StopOnNaNLoss"
    ]
    learner.fit(1)
    assert steps(learner) == 2
