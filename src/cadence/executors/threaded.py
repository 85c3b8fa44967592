"""``ThreadedExecutor``: run the handlers of one event at the same time where that is safe.

The schedule is computed once per plan and kept in ``plan.cache``. Handler ``j`` waits for
every handler that ``plan.predecessors`` puts before it, and for every earlier handler ``i < j``
whose declared access *conflicts* with its own (one writes a path the other reads or writes,
``NoConflict`` pairs included). Two handlers overlap in time only when neither waits for the
other, directly or through others; such a pair touches disjoint state, or only reads common
state, so the run is equivalent to the plan's serial order.

Threads pay off for handlers that wait (I/O, sleeps, torch ops that release the GIL), and cost
more than they save for cheap ones. So the executor times handlers on a few serial runs, then
again on one run in every ``review_every``, and runs a plan with threads only when two handlers
that may overlap each take at least ``inline_below`` seconds; every other plan runs inline, on
the same code path as ``SerialExecutor``.
"""

from __future__ import annotations

import itertools
import os
import queue
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from heapq import heappop, heappush
from typing import Any, ClassVar, NoReturn

import torch

from cadence.errors import CancelSignal
from cadence.events import Event, FitEnd
from cadence.executors.protocol import Schedule, add_handler_note
from cadence.executors.serial import SerialExecutor
from cadence.graph import HandlerCall, Plan
from cadence.phases import Phase

__all__ = ["ThreadedExecutor"]

_KEYS = itertools.count()
_FOREVER = sys.maxsize
_SERIAL = SerialExecutor()
Outcome = tuple[int, BaseException | None]


class _PlanState:
    """What the executor keeps per plan: the schedule, cost estimates and the current mode."""

    __slots__ = (
        "schedule", "samples", "parallel_times", "backoff", "pinned", "heavy", "warmup", "fit_end", "timed",
        "parallel_runs", "inline_runs",
    )

    def __init__(self, plan: Plan, warmup: int, threads: bool, forced: bool) -> None:
        self.schedule = Schedule.of(plan)
        n = len(plan.calls)
        self.samples: list[list[float]] = [[] for _ in range(n)]  # seconds of recent timed calls
        self.parallel_times: list[float] = []  # seconds per threaded run since the last review
        self.backoff = 1  # grows while threads do not pay for this plan
        # Callbacks whose state is per thread (autocast, say) stay on the learner's thread.
        self.pinned = tuple(getattr(cb, "thread_affine", False) for cb in plan.callbacks)
        self.heavy = tuple(not pin for pin in self.pinned)  # which handlers are worth a thread
        self.warmup = warmup
        self.fit_end = issubclass(plan.event, FitEnd)  # FitEnd always takes the slow path
        movable = sum(1 << i for i, pin in enumerate(self.pinned) if not pin)
        overlap = threads and self.schedule.any_may_overlap(movable)
        self.timed = overlap and not forced  # only then do costs decide anything
        self.parallel_runs = _FOREVER if overlap and forced else 0
        self.inline_runs = 0 if self.fit_end or self.timed or self.parallel_runs else _FOREVER


class ThreadedExecutor:
    """Runs the handlers of each event concurrently where the plan allows it.

    Two handlers never run at the same time when one of them waits for the other in the plan
    (``run_after``, writer before reader, ``RunFirst``) or when their callbacks' declared
    accesses overlap with a write, even if the pair answered ``NoConflict``: such pairs run in
    plan order. Every other pair touches disjoint state or only reads common state, so the
    learner ends in the same state as with ``SerialExecutor``.

    Handlers run in worker threads only when that can pay: a plan runs with threads when two of
    its handlers that may overlap each take at least ``inline_below`` seconds (timed on the
    first ``warmup`` calls, then on one call in every ``review_every``); other plans run inline,
    exactly as ``SerialExecutor`` runs them. Grad mode and, once CUDA is in use, the current
    CUDA stream are carried into the worker threads.

    Failures (an exception or a cancel signal) end as in serial execution: every handler that
    comes before the earliest failing one in plan order runs (those not started yet run one by
    one once the running ones have finished), and no handler after it starts once the failure
    has been seen. The one difference: a handler after it that overlapped it, started before it
    failed, has run. The exception of the failed handler earliest in plan order then propagates
    with the same note as in serial execution (errors take precedence over cancel signals; the
    other failures are added as notes), or the cancel signal does, with ``origin`` set, and the
    learner acts on it as after a serial run.
    ``KeyboardInterrupt`` and ``SystemExit``, from a handler or while the executor waits for
    one, are handled the same way and take precedence over both: ``run`` raises them only once
    no handler of the event is running, so ``FitEnd`` handlers never overlap them. The worker
    threads stop at ``FitEnd`` and start again on demand.

    Args:
        max_workers: The most handlers that run at once, counting the learner's own thread
            (which runs handlers too); ``None`` means ``min(32, os.cpu_count() + 4)``.
        inline_below: Handlers whose calls take less than this many seconds run inline. ``0``
            runs every plan that has handlers able to overlap with threads from the first call.

    Example:
        >>> from cadence.testing import make_test_learner
        >>> learner = make_test_learner(executor=ThreadedExecutor(max_workers=4))
        >>> learner.fit(1).stopped is None
        True

    Extending:
        1. Subclass and change ``warmup`` (timed serial calls before a plan is first judged)
           or ``review_every`` (how often a judged plan is timed again).
        2. Reuse ``Schedule.of(plan)`` in your own executor for the same safety rule.
    """

    warmup: ClassVar[int] = 3
    review_every: ClassVar[int] = 64

    def __init__(self, max_workers: int | None = None, *, inline_below: float = 1e-4) -> None:
        if max_workers is None:
            max_workers = min(32, (os.cpu_count() or 1) + 4)
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
            raise ValueError(
                f"ThreadedExecutor(max_workers=...) expects a positive int or None; got {max_workers!r}."
            )
        if isinstance(inline_below, bool) or not isinstance(inline_below, (int, float)) or not inline_below >= 0:
            raise ValueError(
                f"ThreadedExecutor(inline_below=...) expects seconds >= 0, e.g. 1e-4; got {inline_below!r}."
            )
        self.max_workers = max_workers
        self.inline_below = float(inline_below)
        self._pool: ThreadPoolExecutor | None = None
        # Each executor keeps its own state per plan: decisions depend on its settings.
        self._key = f"cadence.executors.threaded.{next(_KEYS)}"

    def run(self, plan: Plan, event: Event, phase: Phase) -> None:
        """Run the handlers of ``plan``; see the class docstring for the guarantees."""
        state = plan.cache.get(self._key)
        if state is None or state.inline_runs <= 0:
            self._run_slow(plan, event, phase)
            return
        # The inline path: SerialExecutor.run plus the check above and this countdown. Its loop
        # is copied, not called: a call adds 20 to 40 ns, over a tenth of a two-handler event.
        state.inline_runs -= 1
        position = 0
        try:
            for handler, view in plan.calls:
                handler(event, phase, view)
                position += 1
        except CancelSignal as signal:
            signal.origin = plan.labels[position]
            raise
        except Exception as exc:
            add_handler_note(exc, plan, position, event, phase)
            raise

    def schedule(self, plan: Plan) -> Schedule:
        """The schedule this executor uses for ``plan``."""
        return self._state(plan).schedule

    def shutdown(self) -> None:
        """Stop the worker threads (after ``FitEnd`` this happens by itself)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def __repr__(self) -> str:
        return f"ThreadedExecutor(max_workers={self.max_workers}, inline_below={self.inline_below})"

    # ---- internals ----------------------------------------------------------------------

    def _state(self, plan: Plan) -> _PlanState:
        state: _PlanState | None = plan.cache.get(self._key)
        if state is None:
            threads, forced = self.max_workers > 1, self.inline_below == 0
            state = plan.cache[self._key] = _PlanState(plan, self.warmup, threads, forced)
        return state

    def _run_slow(self, plan: Plan, event: Event, phase: Phase) -> None:
        state = self._state(plan)
        try:
            if state.parallel_runs > 0:
                state.parallel_runs -= 1
                start = time.perf_counter()
                self._run_parallel(plan, state, event, phase)
                if state.timed:
                    state.parallel_times.append(time.perf_counter() - start)
            elif state.timed:
                self._run_timed(plan, state, event, phase)
            else:
                _SERIAL.run(plan, event, phase)
        finally:
            if state.fit_end:
                self.shutdown()

    def _run_timed(self, plan: Plan, state: _PlanState, event: Event, phase: Phase) -> None:
        durations: list[float] = []
        try:
            _run_timing(plan, durations, event, phase)
        finally:
            self._judge(state, durations)

    def _judge(self, state: _PlanState, durations: list[float]) -> None:
        # A handler's cost is the median of its last three timed calls: a one-off first call
        # or a preempted one does not move it.
        for samples, seconds in zip(state.samples, durations):
            samples.append(seconds)
            del samples[:-3]
        costs = [sorted(s)[len(s) // 2] if s else 0.0 for s in state.samples]
        state.heavy = tuple(cost >= self.inline_below and not pin for cost, pin in zip(costs, state.pinned))
        state.warmup = max(state.warmup - 1, 0)
        state.inline_runs = state.parallel_runs = 0
        if state.warmup > 0:
            return
        threaded, state.parallel_times = state.parallel_times, []
        # Threads that did not pay (GIL-bound handlers, say) are tried again after a pause
        # that doubles each time.
        failed = bool(threaded) and sorted(threaded)[len(threaded) // 2] >= sum(costs)
        state.backoff = min(state.backoff * 2, 64) if failed else 1 if threaded else state.backoff
        heavy = sum(1 << i for i, h in enumerate(state.heavy) if h)
        if not failed and state.schedule.any_may_overlap(heavy):
            state.parallel_runs = self.review_every
        elif not state.fit_end:
            state.inline_runs = self.review_every * (state.backoff if failed else 1)

    def _run_parallel(self, plan: Plan, state: _PlanState, event: Event, phase: Phase) -> None:
        calls, heavy, successors = plan.calls, state.heavy, state.schedule.successors
        waiting = [len(w) for w in state.schedule.waits_for]
        ready_heavy = [p for p, w in enumerate(waiting) if not w and heavy[p]]
        ready_light = [p for p, w in enumerate(waiting) if not w and not heavy[p]]
        done: queue.SimpleQueue[Outcome] = queue.SimpleQueue()
        failures: list[tuple[int, BaseException]] = []
        context = _ThreadContext()
        pool = self._pool
        if pool is None:
            pool = self._pool = ThreadPoolExecutor(self.max_workers - 1, thread_name_prefix="cadence")
        running = 0
        started = 0  # bit mask of the handlers started

        def finished(position: int, exc: BaseException | None) -> None:
            if exc is not None:
                failures.append((position, exc))
                return
            for s in successors[position]:
                waiting[s] -= 1
                if not waiting[s]:
                    heappush(ready_heavy if heavy[s] else ready_light, s)

        try:
            while True:
                while not done.empty():
                    running -= 1
                    finished(*done.get())
                if not failures and (ready_heavy or ready_light):
                    # A heavy handler goes to a worker while there is a free one and other work
                    # to overlap with; otherwise this thread runs the next handler itself.
                    if ready_heavy and running < self.max_workers - 1 and (
                        running or len(ready_heavy) + len(ready_light) > 1
                    ):
                        position = heappop(ready_heavy)
                        pool.submit(_work, calls[position], event, phase, position, done, context)
                        running += 1
                        started |= 1 << position
                        continue
                    position = heappop(ready_heavy) if ready_heavy else heappop(ready_light)
                    started |= 1 << position
                    handler, view = calls[position]
                    try:
                        handler(event, phase, view)
                    except BaseException as exc:  # Ctrl-C too: it waits for the workers
                        finished(position, exc)
                    else:
                        finished(position, None)
                    continue
                if not running:
                    break
                running -= 1
                finished(*done.get())
            if failures:
                _run_before_failure(plan, started, failures, event, phase)
        except BaseException as interrupt:  # raised outside the handlers: Ctrl-C while waiting, say
            # It may have cut short the bookkeeping of ``running``: wait for the workers
            # themselves, so that no handler of this event outlives the run.
            self._pool = None
            _join(pool)
            while not done.empty():
                position, outcome = done.get()
                if outcome is not None:
                    failures.append((position, outcome))
            _fail(plan, failures, event, phase, interrupt)
        if failures:
            _fail(plan, failures, event, phase)


class _ThreadContext:
    """The thread-local torch settings of the learner's thread, to apply in a worker."""

    __slots__ = ("grad", "stream")

    def __init__(self) -> None:
        self.grad = torch.is_grad_enabled()
        cuda = torch.cuda.is_initialized()  # type: ignore[no-untyped-call]
        self.stream = torch.cuda.current_stream() if cuda else None

    def call(self, handler: HandlerCall, event: Event, phase: Phase, view: Any) -> None:
        with torch.set_grad_enabled(self.grad):
            if self.stream is None:
                handler(event, phase, view)
                return
            with torch.cuda.stream(self.stream):
                handler(event, phase, view)


def _work(
    call: tuple[HandlerCall, Any],
    event: Event,
    phase: Phase,
    position: int,
    done: queue.SimpleQueue[Outcome],
    context: _ThreadContext,
) -> None:
    try:
        context.call(call[0], event, phase, call[1])
    except BaseException as exc:  # handed to the learner's thread, which re-raises it
        done.put((position, exc))
    else:
        done.put((position, None))


def _run_before_failure(
    plan: Plan, started: int, failures: list[tuple[int, BaseException]], event: Event, phase: Phase
) -> None:
    """Once no handler runs any more: run, one by one in plan order on this thread, the handlers
    not yet started that come before the earliest failure, as a serial run would have run them
    (their predecessors come before them, so have finished). A new failure ends it, as in a
    serial run. After an interrupt (Ctrl-C, ``SystemExit``) nothing more runs."""
    if not all(isinstance(exc, Exception) for _, exc in failures):
        return
    cut = min(position for position, _ in failures)
    for position in range(cut):
        if started >> position & 1:
            continue
        handler, view = plan.calls[position]
        try:
            handler(event, phase, view)
        except BaseException as exc:  # Ctrl-C too: it wins in _fail
            failures.append((position, exc))
            return


def _run_timing(plan: Plan, durations: list[float], event: Event, phase: Phase) -> None:
    """``SerialExecutor.run``, appending each handler's duration to ``durations``."""
    clock = time.perf_counter
    position = 0
    try:
        for handler, view in plan.calls:
            start = clock()
            handler(event, phase, view)
            durations.append(clock() - start)
            position += 1
    except CancelSignal as signal:
        signal.origin = plan.labels[position]
        raise
    except Exception as exc:
        add_handler_note(exc, plan, position, event, phase)
        raise


def _join(pool: ThreadPoolExecutor) -> None:
    """Wait until no worker of ``pool`` runs a handler; handlers not yet started never start."""
    while True:
        try:
            pool.shutdown(wait=True, cancel_futures=True)
            return
        except BaseException:  # Ctrl-C again: the running handlers must still finish first
            continue


def _fail(
    plan: Plan,
    failures: list[tuple[int, BaseException]],
    event: Event,
    phase: Phase,
    interrupt: BaseException | None = None,
) -> NoReturn:
    """Raise the failure that wins: ``interrupt`` (raised outside the handlers), then
    interrupts, then errors, then signals; earliest in plan order within each. The others
    become notes on it."""

    def rank(failure: tuple[int, BaseException]) -> tuple[int, int]:
        exc = failure[1]
        kind = 2 if isinstance(exc, CancelSignal) else 1 if isinstance(exc, Exception) else 0
        return kind, failure[0]

    failures.sort(key=rank)
    if interrupt is not None:
        chosen = interrupt
    else:
        position, chosen = failures.pop(0)
        if isinstance(chosen, CancelSignal):
            chosen.origin = plan.labels[position]
        elif isinstance(chosen, Exception):
            add_handler_note(chosen, plan, position, event, phase)
    for other, exc in failures:
        chosen.add_note(
            f"{plan.labels[other]} raised {type(exc).__name__}: {exc} at the same event, running "
            f"at the same time (ThreadedExecutor)."
        )
    raise chosen
