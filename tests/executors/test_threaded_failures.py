"""ThreadedExecutor after a failure or a cancel signal: what ran is what a serial run runs, every
handler before the failing one in plan order and none after it, except a later handler that
overlapped the failing one and had started before it failed."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cadence import Callback, CancelBatch, Learner, NoConflict, SerialExecutor, on
from cadence.events import BatchBegin, Event
from cadence.executors import Executor, ThreadedExecutor
from cadence.phases import Phase, TrainingPhase
from cadence.testing import make_test_learner

EXECUTORS: list[ThreadedExecutor] = []


@pytest.fixture(autouse=True)
def _stop_workers() -> Iterator[None]:
    yield
    while EXECUTORS:
        EXECUTORS.pop().shutdown()


def forced(max_workers: int = 8) -> ThreadedExecutor:
    executor = ThreadedExecutor(max_workers=max_workers, inline_below=0)  # threads from the first call
    EXECUTORS.append(executor)
    return executor


class Run:
    """One firing's record: which handlers started, in order."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.lock = threading.Lock()

    def body(self, name: str, seconds: float = 0.0, raises: Callable[[], BaseException] | None = None) -> Callable[..., None]:
        def handle(*_: Any) -> None:
            with self.lock:
                self.started.append(name)
            time.sleep(seconds)
            if raises is not None:
                raise raises()

        return handle


def callback(name: str, body: Callable[..., None], after: tuple[type[Any], ...] = ()) -> type[Callback]:
    """A callback class with one BatchBegin handler and no state: only ``after`` orders it."""

    @on(BatchBegin)
    def handle(self: Any, event: Event, phase: Phase, learner: Any) -> None:
        body()

    return type(name, (Callback,), {"run_after": after, "handle": handle, "resolve_conflict": lambda s, o: NoConflict()})


Layout = list[tuple[str, float, bool, tuple[int, ...]]]  # name, seconds, fails, run_after (indices)


def build(layout: Layout, raises: Callable[[], BaseException], run: Run) -> list[Callback]:
    classes: list[type[Callback]] = []
    for name, seconds, fails, after in layout:
        body = run.body(name, seconds, raises if fails else None)
        classes.append(callback(name, body, tuple(classes[i] for i in after)))
    return [cls() for cls in classes]


def fire(layout: Layout, raises: Callable[[], BaseException], executor: Executor) -> tuple[list[str], BaseException, Learner]:
    run = Run()
    learner = make_test_learner(*build(layout, raises, run), executor=executor)
    plan = learner._plans[TrainingPhase][BatchBegin]
    assert plan is not None and [label.split(".")[0] for label in plan.labels] == [name for name, *_ in layout]
    with pytest.raises((RuntimeError, CancelBatch)) as info:
        learner.fire(BatchBegin(), TrainingPhase())
    return run.started, info.value, learner


ERROR: Callable[[], BaseException] = lambda: RuntimeError("boom")  # noqa: E731
CANCEL: Callable[[], BaseException] = lambda: CancelBatch("skip")  # noqa: E731

LAYOUTS: dict[str, Layout] = {
    # Fail fails while Slow runs; After waits for Slow: it still runs, as in a serial run.
    "chain before": [("Slow", 0.02, False, ()), ("After", 0.0, False, (0,)), ("Fail", 0.0, True, ())],
    # A longer chain, and a later handler waiting for the failing one, which never starts.
    "long chain": [
        ("Slow", 0.02, False, ()), ("Next", 0.01, False, (0,)), ("Last", 0.0, False, (1,)),
        ("Fail", 0.0, True, ()), ("Waits", 0.0, False, (3,)),
    ],
    # One worker: the learner's thread runs Fail while the worker runs Slow.
    "one worker": [("Slow", 0.02, False, ()), ("After", 0.0, False, (0,)), ("Fail", 0.0, True, ()), ("Tail", 0.0, False, (2,))],
}


@pytest.mark.parametrize("raises", [ERROR, CANCEL], ids=["error", "cancel"])
@pytest.mark.parametrize("layout", list(LAYOUTS), ids=list(LAYOUTS))
def test_every_handler_before_the_failing_one_runs_and_none_after_it(layout: str, raises: Callable[[], BaseException]) -> None:
    workers = 2 if layout == "one worker" else 8
    serial, serial_error, _ = fire(LAYOUTS[layout], raises, SerialExecutor())
    threaded, threaded_error, _ = fire(LAYOUTS[layout], raises, forced(workers))
    assert sorted(threaded) == sorted(serial)
    assert type(threaded_error) is type(serial_error) and str(threaded_error) == str(serial_error)
    if isinstance(serial_error, CancelBatch):
        assert threaded_error.origin == serial_error.origin == "Fail.handle"  # type: ignore[attr-defined]
    else:
        assert threaded_error.__notes__ == serial_error.__notes__ == ["Raised by Fail.handle while handling BatchBegin in TrainingPhase."]


@pytest.mark.parametrize("raises", [ERROR, CANCEL], ids=["error", "cancel"])
def test_an_earlier_handler_failing_after_a_later_one_becomes_the_failure(raises: Callable[[], BaseException]) -> None:
    # Late fails first (Early is still waiting for Slow); then Early runs and fails too: Between,
    # after Early in plan order, must not run. Late, which overlapped, has run (the one difference).
    layout: Layout = [
        ("Slow", 0.02, False, ()), ("Early", 0.0, True, (0,)), ("Between", 0.0, False, (0,)), ("Late", 0.0, True, ()),
    ]
    serial, serial_error, _ = fire(layout, raises, SerialExecutor())
    threaded, threaded_error, _ = fire(layout, raises, forced())
    assert serial == ["Slow", "Early"]
    assert sorted(threaded) == ["Early", "Late", "Slow"]
    assert str(threaded_error) == str(serial_error)
    if isinstance(threaded_error, CancelBatch):
        assert threaded_error.origin == "Early.handle"
    else:
        assert threaded_error.__notes__[0] == "Raised by Early.handle while handling BatchBegin in TrainingPhase."
        assert "Late.handle raised RuntimeError: boom at the same event" in threaded_error.__notes__[1]


def test_a_cancelled_batch_has_the_same_effect_as_in_serial_execution() -> None:
    counted: dict[str, int] = {}
    for executor in (SerialExecutor(), forced()):
        run = Run()
        callbacks = build(LAYOUTS["long chain"], CANCEL, run)
        learner = make_test_learner(*callbacks, n_batches=3, executor=executor)
        learner.fit(1)
        counted[type(executor).__name__] = len(run.started)
    assert counted == {"SerialExecutor": 3 * 2 * 4, "ThreadedExecutor": 3 * 2 * 4}  # 4 handlers, 6 batches


# ---- against serial, on random layouts -----------------------------------------------------


@st.composite
def layouts(draw: st.DrawFn) -> tuple[Layout, int]:
    n = draw(st.integers(2, 6))
    layout: Layout = []
    for i in range(n):
        after = tuple(sorted(draw(st.sets(st.integers(0, i - 1), max_size=2)))) if i else ()
        layout.append((f"H{i}", draw(st.sampled_from([0.0, 0.0, 0.002, 0.01])), False, after))
    failing = draw(st.integers(0, n - 1))
    name, _, _, after = layout[failing]
    layout[failing] = (name, 0.0, True, after)
    return layout, failing


def waits_for(layout: Layout, target: int, source: int) -> bool:
    """Whether handler ``target`` waits, directly or through others, for ``source``."""
    pending, seen = list(layout[target][3]), set()
    while pending:
        i = pending.pop()
        if i == source:
            return True
        if i not in seen:
            seen.add(i)
            pending.extend(layout[i][3])
    return False


@pytest.mark.timeout(60)
@settings(max_examples=25, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=layouts(), cancel=st.booleans(), workers=st.sampled_from([2, 3, 8]))
def test_on_random_layouts_what_ran_is_the_serial_run_plus_only_overlapping_later_handlers(
    case: tuple[Layout, int], cancel: bool, workers: int
) -> None:
    layout, failing = case
    raises = CANCEL if cancel else ERROR
    serial, serial_error, _ = fire(layout, raises, SerialExecutor())
    threaded, threaded_error, _ = fire(layout, raises, forced(workers))
    assert serial == [name for name, *_ in layout[: failing + 1]]
    assert set(serial) <= set(threaded)
    for extra in set(threaded) - set(serial):
        position = int(extra[1:])
        assert position > failing and not waits_for(layout, position, failing)
    assert type(threaded_error) is type(serial_error)
    assert getattr(threaded_error, "origin", None) == getattr(serial_error, "origin", None)
