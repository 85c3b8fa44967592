"""ThreadedExecutor: same results as SerialExecutor, no overlap of conflicting handlers, and
failures and signals handled as in serial execution."""

from __future__ import annotations

import _thread
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from cadence import (
    READ,
    WRITE,
    Callback,
    CancelBatch,
    CancelFit,
    ConflictError,
    CycleError,
    NoConflict,
    Recorder,
    SerialExecutor,
    on,
)
from cadence.events import BackwardEnd, BatchBegin, BatchEnd, EpochEnd, Event, FitEnd
from cadence.executors import Executor, ThreadedExecutor
from cadence.phases import Phase, TrainingPhase, ValidationPhase
from cadence.testing import make_test_learner

Span = tuple[str, int, int, str]  # label, start ns, end ns, thread name


def handler_class(
    name: str,
    state_access: dict[str, Any],
    events: Iterable[type[Event]],
    body: Callable[[Any, Event, Phase, Any], None],
    *,
    run_after: tuple[type[Any], ...] = (),
    phase: type[Phase] = Phase,
) -> type[Callback]:
    """A callback class named ``name`` whose one handler runs ``body`` at ``events``."""

    def handle(self: Any, event: Event, phase: Phase, learner: Any) -> None:
        body(self, event, phase, learner)

    for event in events:
        handle = on(event, phase=phase)(handle)
    namespace = {
        "state_access": state_access,
        "run_after": run_after,
        "handle": handle,
        "resolve_conflict": lambda self, other: NoConflict(),
    }
    return type(name, (Callback,), namespace)


def timed(spans: list[Span], label: str, work: Callable[[], None]) -> None:
    start = time.perf_counter_ns()
    try:
        work()
    finally:
        spans.append((label, start, time.perf_counter_ns(), thread_name()))


def sleeper(spans: list[Span], label: str, seconds: float) -> Callable[..., None]:
    """A handler body that sleeps ``seconds`` and records its span."""
    return lambda *_: timed(spans, label, lambda: time.sleep(seconds))


def noop(*_: Any) -> None:
    pass


def thread_name() -> str:
    return threading.current_thread().name


def clash(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two declarations overlap with a write (computed here, not with cadence's code)."""
    for path_a, access_a in a.items():
        for path_b, access_b in b.items():
            x, y = path_a.split("."), path_b.split(".")
            n = min(len(x), len(y))
            if x[:n] == y[:n] and WRITE in (access_a, access_b):
                return True
    return False


def overlapping(spans: list[Span]) -> list[tuple[str, str]]:
    """The pairs of spans that overlap in time."""
    found = []
    ordered = sorted(spans, key=lambda s: s[1])
    for i, (label, start, end, _) in enumerate(ordered):
        for other, other_start, _, _ in ordered[i + 1 :]:
            if other_start >= end:
                break
            found.append((label, other))
    return found


EXECUTORS: list[ThreadedExecutor] = []


def forced(max_workers: int = 8) -> ThreadedExecutor:
    """An executor that uses threads from the first call, whatever the handlers cost."""
    executor = ThreadedExecutor(max_workers=max_workers, inline_below=0)
    EXECUTORS.append(executor)
    return executor


@pytest.fixture(autouse=True)
def _stop_workers() -> Iterator[None]:
    """Tests that fire events directly (no FitEnd) leave worker threads; stop them."""
    yield
    while EXECUTORS:
        EXECUTORS.pop().shutdown()


def worker_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("cadence")]


# ---- equivalence on random callback sets ------------------------------------------------------

PATHS = ("cbstate.a", "cbstate.a.x", "cbstate.a.y", "cbstate.b", "batch.loss")
EVENTS = (BackwardEnd, BatchEnd, EpochEnd)


class Store(Callback):
    """Creates the shared entries; handles no event."""

    state_access = {"cbstate.a": WRITE, "cbstate.b": WRITE}

    def init(self, learner: Any) -> None:
        learner.cbstate.a = {"x": [], "y": []}
        learner.cbstate.b = {"b": []}


def lists_at(learner: Any, path: str) -> list[list[Any]]:
    parts = path.split(".")
    if parts[1] == "a":
        entry = learner.cbstate.a
        return [entry[parts[2]]] if len(parts) == 3 else [entry["x"], entry["y"]]
    return [learner.cbstate.b["b"]]


def random_callbacks(specs: list[Any], spans: list[Span]) -> list[type[Callback]]:
    """One callback class per spec: it reads its read paths, sleeps, then appends what it read
    to every list under its write paths (so any change of order changes the final state)."""
    classes: list[type[Callback]] = []
    for index, (access, events, sleep_units, after_previous) in enumerate(specs):
        access = {p: READ if p == "batch.loss" else a for p, a in access.items()}
        label = f"C{index}"

        def body(
            self: Any, event: Event, phase: Phase, learner: Any,
            access: Any = access, label: str = label, sleep: float = sleep_units / 10_000,
        ) -> None:
            def work() -> None:
                seen: list[Any] = []
                for path in sorted(access):
                    if path == "batch.loss":
                        seen.append(round(float(learner.batch.loss), 6))
                    else:
                        seen.extend(len(items) for items in lists_at(learner, path))
                time.sleep(sleep)
                for path in sorted(p for p, a in access.items() if a is WRITE):
                    for items in lists_at(learner, path):
                        items.append((label, type(event).__name__, phase.name, tuple(seen)))

            timed(spans, label, work)

        run_after = (Store, classes[-1]) if after_previous and classes else (Store,)
        classes.append(handler_class(label, access, events, body, run_after=run_after))
    return classes


callback_specs = st.lists(
    st.tuples(
        st.dictionaries(st.sampled_from(PATHS), st.sampled_from([READ, WRITE]), max_size=3),
        st.sets(st.sampled_from(EVENTS), min_size=1),
        st.integers(0, 10),
        st.booleans(),
    ),
    min_size=2,
    max_size=6,
)


def final_state(executor: Executor, classes: list[type[Callback]]) -> tuple[Any, Any, torch.Tensor]:
    learner = make_test_learner(Store(), *(cls() for cls in classes), n_batches=3, executor=executor)
    assert learner.fit(2).stopped is None
    return learner.cbstate.a, learner.cbstate.b, torch.nn.utils.parameters_to_vector(learner.model.parameters())


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(callback_specs)
def test_threaded_matches_serial_and_never_overlaps_conflicting_handlers(specs: list[Any]) -> None:
    spans: list[Span] = []
    classes = random_callbacks(specs, spans)
    declared = {cls.__name__: dict(cls.state_access) for cls in classes}

    try:
        serial = final_state(SerialExecutor(), classes)
    except (CycleError, ConflictError):
        reject()  # e.g. two callbacks that each write what the other reads
    spans.clear()
    threaded = final_state(forced(), classes)

    assert threaded[0] == serial[0] and threaded[1] == serial[1]
    assert torch.equal(threaded[2], serial[2])
    for a, b in overlapping(spans):
        assert not clash(declared[a], declared[b]), f"{a} and {b} ran at the same time"


def test_independent_handlers_run_at_the_same_time() -> None:
    spans: list[Span] = []
    barrier = threading.Barrier(3, timeout=5)  # passes only when all three are running at once

    def wait() -> None:
        barrier.wait()

    def waiter(label: str) -> Callable[..., None]:
        return lambda *_: timed(spans, label, wait)

    classes = [handler_class(f"Waiter{i}", {f"cbstate.s{i}": WRITE}, [BatchEnd], waiter(f"s{i}")) for i in range(3)]
    learner = make_test_learner(*(cls() for cls in classes), executor=forced())
    learner.fire(BatchEnd(), TrainingPhase())
    assert len(overlapping(spans)) == 3
    assert len({name for *_, name in spans}) == 3


def test_no_conflict_writers_of_the_same_state_run_in_plan_order_one_at_a_time() -> None:
    spans: list[Span] = []
    classes = [
        handler_class(f"Writer{i}", {"cbstate.shared": WRITE}, [BatchEnd], sleeper(spans, f"w{i}", 0.005))
        for i in range(3)
    ]
    learner = make_test_learner(*(cls() for cls in classes), executor=forced())
    executor = learner.executor
    assert isinstance(executor, ThreadedExecutor)
    learner.fire(BatchEnd(), TrainingPhase())
    assert [label for label, *_ in sorted(spans, key=lambda s: s[1])] == ["w0", "w1", "w2"]
    assert overlapping(spans) == []


def test_at_most_max_workers_handlers_run_at_once() -> None:
    spans: list[Span] = []
    classes = [
        handler_class(f"Sleeper{i}", {}, [BatchEnd], sleeper(spans, f"s{i}", 0.005))
        for i in range(6)
    ]
    learner = make_test_learner(*(cls() for cls in classes), executor=forced(max_workers=2))
    learner.fire(BatchEnd(), TrainingPhase())
    for _, start, _, _ in spans:
        assert sum(s <= start < e for _, s, e, _ in spans) <= 2


# ---- the schedule -------------------------------------------------------------------------------


def handler_class_noop(name: str, access: dict[str, Any]) -> type[Callback]:
    return handler_class(name, access, [BatchEnd], noop)


@pytest.mark.parametrize(
    ("first", "second", "may_overlap"),
    [
        ({"cbstate.a": WRITE}, {"cbstate.a": WRITE}, False),  # NoConflict pair: still one at a time
        ({"cbstate.a": WRITE}, {"cbstate.a.x": READ}, False),
        ({"cbstate.a.x": WRITE}, {"cbstate.a.y": WRITE}, True),
        ({"cbstate.a": READ}, {"cbstate.a": READ}, True),
        ({"cbstate.b": WRITE}, {"cbstate.a": WRITE}, True),
        ({"batch.loss": READ}, {"batch": WRITE}, False),
    ],
)
def test_schedule_lets_handlers_overlap_only_without_a_write_conflict(
    first: dict[str, Any], second: dict[str, Any], may_overlap: bool
) -> None:
    classes = [handler_class_noop("First", first), handler_class_noop("Second", second)]
    learner = make_test_learner(Store(), *(cls() for cls in classes))
    executor = ThreadedExecutor()
    plan = learner._plans[TrainingPhase][BatchEnd]
    assert plan is not None and len(plan.calls) == 2
    assert executor.schedule(plan).may_overlap(0, 1) is may_overlap


def test_schedule_follows_run_after_between_disjoint_callbacks() -> None:
    first = handler_class_noop("First", {"cbstate.a": WRITE})
    second = handler_class("Second", {"cbstate.b": WRITE}, [BatchEnd], noop, run_after=(first,))
    third = handler_class_noop("Third", {"cbstate.c": WRITE})
    learner = make_test_learner(Store(), first(), second(), third())
    plan = learner._plans[TrainingPhase][BatchEnd]
    assert plan is not None
    schedule = ThreadedExecutor().schedule(plan)
    assert not schedule.may_overlap(0, 1)
    assert schedule.may_overlap(0, 2) and schedule.may_overlap(1, 2)
    assert schedule.waits_for == ((), (0,), ())


# ---- failures and signals -----------------------------------------------------------------------


class Scenario:
    """Slow (running), Failing (raises while Slow runs), Dependent (after Failing) and Later
    (after Slow, through a write conflict): the last two must never start."""

    def __init__(self, raise_: Callable[[], BaseException], event: type[Event] = BatchEnd) -> None:
        self.started: list[str] = []
        self.finished: list[str] = []
        self.threads: dict[str, str] = {}
        slow_started, raised = threading.Event(), threading.Event()

        def slow(*_: Any) -> None:
            self.started.append("slow")
            self.threads["slow"] = thread_name()
            slow_started.set()
            raised.wait(5)
            time.sleep(0.05)  # still running when the failure is seen
            self.finished.append("slow")

        def failing(*_: Any) -> None:
            self.started.append("failing")
            self.threads["failing"] = thread_name()
            slow_started.wait(5)
            raised.set()
            raise raise_()

        def record(name: str) -> Callable[..., None]:
            return lambda *_: self.started.append(name)

        slow_cls = handler_class("Slow", {"cbstate.slow": WRITE}, [event], slow)
        failing_cls = handler_class("Failing", {"cbstate.failing": WRITE}, [event], failing)
        dependent_cls = handler_class(
            "Dependent", {"cbstate.dep": WRITE}, [event], record("dependent"), run_after=(failing_cls,)
        )
        later_cls = handler_class("Later", {"cbstate.slow": READ}, [event], record("later"))
        self.callbacks = [slow_cls(), failing_cls(), dependent_cls(), later_cls()]


def test_a_failing_handler_propagates_with_the_serial_note_and_running_ones_finish() -> None:
    scenario = Scenario(lambda: ValueError("boom"))
    learner = make_test_learner(*scenario.callbacks, executor=forced())
    with pytest.raises(ValueError, match="boom") as info:
        learner.fire(BatchEnd(), TrainingPhase())
    assert info.value.__notes__ == ["Raised by Failing.handle while handling BatchEnd in TrainingPhase."]
    assert scenario.finished == ["slow"]
    assert sorted(scenario.started) == ["failing", "slow"]


def test_the_note_is_the_same_as_in_serial_execution() -> None:
    def fail(*_: Any) -> None:
        raise KeyError("missing")

    notes = []
    for executor in (SerialExecutor(), forced()):
        classes = [handler_class_noop("Quiet", {"cbstate.q": WRITE}), handler_class("Broken", {}, [BatchEnd], fail)]
        learner = make_test_learner(*(cls() for cls in classes), executor=executor)
        with pytest.raises(KeyError) as info:
            learner.fire(BatchEnd(), TrainingPhase())
        notes.append(info.value.__notes__)
    assert notes[0] == notes[1] == ["Raised by Broken.handle while handling BatchEnd in TrainingPhase."]


def test_when_two_handlers_fail_the_earliest_in_plan_order_wins_and_the_other_is_noted() -> None:
    barrier = threading.Barrier(2, timeout=5)

    def fail(message: str) -> Callable[..., None]:
        def body(*_: Any) -> None:
            barrier.wait()
            raise RuntimeError(message)

        return body

    classes = [handler_class(name, {}, [BatchEnd], fail(name.lower())) for name in ("First", "Second")]
    learner = make_test_learner(*(cls() for cls in classes), executor=forced())
    with pytest.raises(RuntimeError, match="first") as info:
        learner.fire(BatchEnd(), TrainingPhase())
    assert info.value.__notes__[0] == "Raised by First.handle while handling BatchEnd in TrainingPhase."
    assert "Second.handle raised RuntimeError: second at the same event" in info.value.__notes__[1]


def test_a_cancel_signal_stops_handlers_not_yet_started_and_sets_its_origin() -> None:
    scenario = Scenario(lambda: CancelBatch("skip"), event=BatchBegin)
    learner = make_test_learner(*scenario.callbacks, executor=forced())
    with pytest.raises(CancelBatch) as info:
        learner.fire(BatchBegin(), TrainingPhase())
    assert info.value.origin == "Failing.handle"
    assert scenario.finished == ["slow"]
    assert sorted(scenario.started) == ["failing", "slow"]


def test_a_cancel_signal_takes_effect_as_in_serial_execution() -> None:
    scenario = Scenario(lambda: CancelBatch("skip"), event=BatchBegin)
    learner = make_test_learner(*scenario.callbacks, Recorder(), n_batches=4, executor=forced())
    assert learner.fit(1).stopped is None
    assert learner.cbstate.history[TrainingPhase()].steps == 0  # every training batch cancelled
    assert learner.cbstate.history[ValidationPhase()].steps == 0


def test_cancel_fit_from_a_worker_is_returned_by_fit_with_its_origin() -> None:
    def stop(*_: Any) -> None:
        time.sleep(0.002)
        raise CancelFit("enough")

    classes = [handler_class("Stopper", {}, [BatchEnd], stop), handler_class_noop("Other", {"cbstate.o": WRITE})]
    learner = make_test_learner(*(cls() for cls in classes), Recorder(), executor=forced())
    result = learner.fit(3).stopped
    assert isinstance(result, CancelFit)
    assert (result.reason, result.origin) == ("enough", "Stopper.handle")
    assert not worker_threads()


def test_ctrl_c_in_a_handler_on_the_learners_thread_waits_for_the_workers() -> None:
    scenario = Scenario(KeyboardInterrupt)
    # One worker: Slow goes to it, and Failing runs on the learner's thread.
    learner = make_test_learner(*scenario.callbacks, executor=forced(max_workers=2))
    with pytest.raises(KeyboardInterrupt) as info:
        learner.fire(BatchEnd(), TrainingPhase())
    assert scenario.threads["failing"] == thread_name() != scenario.threads["slow"]
    assert scenario.finished == ["slow"]
    assert sorted(scenario.started) == ["failing", "slow"]
    assert not hasattr(info.value, "__notes__")  # as in serial execution: no handler note


def test_fit_end_never_overlaps_a_handler_that_ctrl_c_left_running() -> None:
    scenario = Scenario(KeyboardInterrupt)
    seen_at_fit_end: list[list[str]] = []
    watcher = handler_class("Watcher", {}, [FitEnd], lambda *_: seen_at_fit_end.append(list(scenario.finished)))
    learner = make_test_learner(*scenario.callbacks, watcher(), executor=forced(max_workers=2))
    with pytest.raises(KeyboardInterrupt):
        learner.fit(1)
    assert seen_at_fit_end == [["slow"]]
    assert not worker_threads()


class WaitingScenario:
    """Slow and Sender run in workers while the learner's thread waits; Sender interrupts the
    learner's thread (a real SIGINT, or ``_thread.interrupt_main``) while Slow still runs, and
    Slow then fails. After (after Sender) must never start."""

    def __init__(self, how: str) -> None:
        self.started: list[str] = []
        self.finished: list[str] = []
        sent = threading.Event()

        def slow(*_: Any) -> None:
            self.started.append("slow")
            sent.wait(5)
            time.sleep(0.05)  # still running when the interrupt is raised
            self.finished.append("slow")
            raise ValueError("late")

        def sender(*_: Any) -> None:
            self.started.append("sender")
            if how == "signal":
                main = threading.main_thread().ident
                assert main is not None
                signal.pthread_kill(main, signal.SIGINT)
            else:
                _thread.interrupt_main()
            sent.set()

        slow_cls = handler_class("Slow", {"cbstate.slow": WRITE}, [BatchEnd], slow)
        sender_cls = handler_class("Sender", {"cbstate.sender": WRITE}, [BatchEnd], sender)
        after_cls = handler_class(
            "After", {}, [BatchEnd], lambda *_: self.started.append("after"), run_after=(sender_cls,)
        )
        self.callbacks = [slow_cls(), sender_cls(), after_cls()]


@pytest.fixture
def sigint_raises() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt in the main thread, where the learner runs."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals are handled on the main thread only")
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("sigint_raises")
@pytest.mark.parametrize("how", ["signal", "interrupt_main"])
def test_ctrl_c_while_waiting_for_workers_lets_them_finish_first(how: str) -> None:
    scenario = WaitingScenario(how)
    learner = make_test_learner(*scenario.callbacks, executor=forced(max_workers=3))
    with pytest.raises(KeyboardInterrupt) as info:
        learner.fire(BatchEnd(), TrainingPhase())
    assert scenario.finished == ["slow"]
    assert sorted(scenario.started) == ["sender", "slow"]
    assert info.value.__notes__ == [
        "Slow.handle raised ValueError: late at the same event, running at the same time (ThreadedExecutor)."
    ]
    assert not worker_threads()  # joined; they start again on demand


@pytest.mark.usefixtures("sigint_raises")
def test_a_second_ctrl_c_does_not_cut_the_wait_for_the_workers_short(monkeypatch: pytest.MonkeyPatch) -> None:
    real_shutdown = ThreadPoolExecutor.shutdown
    again: list[bool] = []

    def shutdown(self: ThreadPoolExecutor, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if not again:
            again.append(True)
            raise KeyboardInterrupt  # as if pressed again as the executor starts waiting
        real_shutdown(self, wait, cancel_futures=cancel_futures)

    monkeypatch.setattr(ThreadPoolExecutor, "shutdown", shutdown)
    scenario = WaitingScenario("interrupt_main")
    learner = make_test_learner(*scenario.callbacks, executor=forced(max_workers=3))
    with pytest.raises(KeyboardInterrupt):
        learner.fire(BatchEnd(), TrainingPhase())
    assert again and scenario.finished == ["slow"]


# ---- inline decisions, threads, torch state -----------------------------------------------------


def test_cheap_handlers_run_inline_on_the_learners_thread() -> None:
    threads: set[str] = set()
    classes = [
        handler_class(f"Cheap{i}", {f"cbstate.c{i}": WRITE}, [BatchEnd], lambda *_: threads.add(thread_name()))
        for i in range(3)
    ]
    learner = make_test_learner(*(cls() for cls in classes), n_batches=50, executor=ThreadedExecutor())
    learner.fit(2)
    assert threads == {thread_name()}


def test_slow_independent_handlers_move_to_worker_threads_after_warm_up() -> None:
    threads: list[str] = []

    def slow(*_: Any) -> None:
        time.sleep(0.001)
        threads.append(thread_name())

    classes = [handler_class(f"Slow{i}", {}, [BatchEnd], slow) for i in range(2)]
    executor = ThreadedExecutor()
    EXECUTORS.append(executor)
    learner = make_test_learner(*(cls() for cls in classes), executor=executor)
    for _ in range(ThreadedExecutor.warmup):
        learner.fire(BatchEnd(), TrainingPhase())
    assert all(name == thread_name() for name in threads)
    threads.clear()
    learner.fire(BatchEnd(), TrainingPhase())
    assert any(name.startswith("cadence") for name in threads)


def test_grad_mode_is_carried_into_worker_threads() -> None:
    seen: list[tuple[str, bool]] = []

    def look(*_: Any) -> None:
        time.sleep(0.002)
        seen.append((threading.current_thread().name, torch.is_grad_enabled()))

    classes = [handler_class(f"Look{i}", {}, [BatchEnd], look, phase=ValidationPhase) for i in range(3)]
    learner = make_test_learner(*(cls() for cls in classes), n_batches=2, executor=forced())
    learner.fit(1)
    assert len(seen) == 6 and not any(grad for _, grad in seen)
    assert any(name.startswith("cadence") for name, _ in seen)


def test_worker_threads_stop_at_fit_end_and_start_again() -> None:
    classes = [handler_class(f"Slow{i}", {}, [BatchEnd], lambda *_: time.sleep(0.001)) for i in range(2)]
    learner = make_test_learner(*(cls() for cls in classes), n_batches=2, executor=forced())
    for _ in range(2):
        learner.fit(1)
        assert not worker_threads()


def test_the_executor_survives_adding_a_callback() -> None:
    executor = forced()
    learner = make_test_learner(Recorder(), executor=executor)
    learner.add_callback(handler_class_noop("Extra", {"cbstate.e": WRITE})())
    assert learner.executor is executor
    learner.fit(1)
    assert learner.cbstate.history[TrainingPhase()].steps == 16


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_workers": 0}, r"max_workers=...\) expects a positive int or None; got 0"),
        ({"inline_below": -1.0}, r"inline_below=...\) expects seconds >= 0, e.g. 1e-4; got -1.0"),
    ],
)
def test_bad_arguments_are_rejected(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ThreadedExecutor(**kwargs)


class QuickReview(ThreadedExecutor):
    review_every = 4


def test_threads_that_do_not_pay_are_given_up_for_a_while() -> None:
    # A resource the declarations do not show, held under a lock and twice as slow from a
    # worker thread (a thread-affine library, say): threads cost twice the serial time, a margin
    # that a loaded machine's timing noise does not close.
    lock = threading.Lock()
    learners_thread = threading.current_thread()
    threads: list[str] = []

    def contend(*_: Any) -> None:
        with lock:
            time.sleep(0.001 if threading.current_thread() is learners_thread else 0.002)
        threads.append(thread_name())

    executor = QuickReview()
    EXECUTORS.append(executor)
    classes = [handler_class(f"Contender{i}", {}, [BatchEnd], contend) for i in range(2)]
    learner = make_test_learner(*(cls() for cls in classes), executor=executor)
    for _ in range(ThreadedExecutor.warmup + QuickReview.review_every):  # warm-up, then threaded runs
        learner.fire(BatchEnd(), TrainingPhase())
    assert any(name.startswith("cadence") for name in threads)
    learner.fire(BatchEnd(), TrainingPhase())  # the review finds the threads did not pay
    threads.clear()
    for _ in range(2 * QuickReview.review_every):
        learner.fire(BatchEnd(), TrainingPhase())
    assert threads and all(name == thread_name() for name in threads)


def test_one_worker_means_no_threads() -> None:
    threads: set[str] = set()

    def slow(*_: Any) -> None:
        time.sleep(0.001)
        threads.add(thread_name())

    classes = [handler_class(f"Slow{i}", {}, [BatchEnd], slow) for i in range(2)]
    executor = ThreadedExecutor(max_workers=1, inline_below=0)
    learner = make_test_learner(*(cls() for cls in classes), n_batches=4, executor=executor)
    learner.fit(2)
    assert threads == {thread_name()}


def test_thread_affine_callbacks_stay_on_the_learners_thread() -> None:
    import threading

    from cadence import Callback, on
    from cadence.events import BatchEnd
    from cadence.executors import ThreadedExecutor
    from cadence.testing import make_test_learner

    seen: dict[str, set[int]] = {"pinned": set(), "free": set()}

    class Pinned(Callback):
        thread_affine = True

        @on(BatchEnd)
        def record(self, event: object, phase: object, learner: object) -> None:
            seen["pinned"].add(threading.get_ident())

    class Free(Callback):
        @on(BatchEnd)
        def record(self, event: object, phase: object, learner: object) -> None:
            seen["free"].add(threading.get_ident())

    class Free2(Free):
        pass

    learner = make_test_learner(Pinned(), Free(), Free2(), executor=ThreadedExecutor(inline_below=0), n_batches=8)
    learner.fit(1)
    assert seen["pinned"] == {threading.get_ident()}
    assert seen["free"] - {threading.get_ident()}, "the free handlers did use worker threads"
