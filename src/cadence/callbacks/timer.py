"""CallbackTimer: the time spent in each handler, per event and phase, reported when fit ends."""

from __future__ import annotations

import dataclasses
import itertools
import time
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from cadence.events import Event, FitBegin, FitEnd
from cadence.executors import Executor, SerialExecutor
from cadence.graph import HandlerCall, Plan
from cadence.phases import Phase

__all__ = ["CallbackTimer", "HandlerTime"]


@dataclass(frozen=True, slots=True)
class HandlerTime:
    """The time one handler took at one (event, phase), summed over its calls.

    Attributes:
        handler: ``"Callback.method"``, as ``explain()`` labels it.
        event: The event class name.
        phase: The phase class name.
        calls: How many times it ran (calls that raised included).
        total_ns: Time spent in it, in nanoseconds.
    """

    handler: str
    event: str
    phase: str
    calls: int
    total_ns: int

    @property
    def total_ms(self) -> float:
        return self.total_ns / 1e6

    @property
    def mean_us(self) -> float:
        return self.total_ns / 1e3 / self.calls if self.calls else 0.0


@dataclass(slots=True)
class _Clocks:
    """Per-position totals of one plan since ``generation``'s reset; the timed handlers add to
    them."""

    plan: Plan
    ns: list[int]
    calls: list[int]
    generation: int


class CallbackTimer:
    """An executor that times every handler call and prints a table when ``fit`` ends.

    It runs each plan with ``inner`` (``SerialExecutor()`` by default, or any executor, such
    as a threaded one), handing it a copy of the plan whose handlers are wrapped in a clock, so
    the time is attributed to exactly the handler that spent it. The copies are made once per
    plan and kept in ``plan.cache``. Totals start afresh at every ``FitBegin``; the table,
    sorted by total time, is printed at ``FitEnd`` (a rich table on a terminal, plain text
    otherwise). Timing adds a function call per handler call, so keep it for diagnosis.

    Args:
        inner: The executor that runs the handlers.
        print_report: Print the table at ``FitEnd``. ``report()`` and ``totals()`` give the
            numbers in any case.

    Example:
        >>> from cadence import Recorder
        >>> from cadence.testing import make_test_learner
        >>> timer = CallbackTimer(print_report=False)
        >>> learner = make_test_learner(Recorder(), executor=timer, n_batches=4)
        >>> _ = learner.fit(2)
        >>> sorted((t.handler, t.event, t.phase, t.calls) for t in timer.totals())[:2]
        [('Recorder.batch_end', 'BatchEnd', 'TrainingPhase', 8), ('Recorder.batch_end', 'BatchEnd', 'ValidationPhase', 8)]
        >>> print(timer.report().splitlines()[1])
        handler               event       phase            calls  total ms  mean µs
    """

    def __init__(self, inner: Executor | None = None, *, print_report: bool = True) -> None:
        if inner is not None and not callable(getattr(inner, "run", None)):
            raise TypeError(
                f"CallbackTimer(inner=...) expects an executor with run(plan, event, phase), such "
                f"as SerialExecutor(); got {type(inner).__name__}."
            )
        self.inner: Executor = SerialExecutor() if inner is None else inner
        self.print_report = print_report
        # One key for the timer's life: each plan gets one timed copy, whatever the number of fits.
        self._key = f"cadence.CallbackTimer:{next(_TIMER_IDS)}"
        self._clocks: list[_Clocks] = []
        self._generation = 0

    def run(self, plan: Plan, event: Event, phase: Phase) -> None:
        if plan.event is FitBegin:
            self.reset()
        cached = plan.cache.get(self._key)
        if cached is None:
            timed, clocks = self._time(plan)
        else:
            timed, clocks = cached
            if clocks.generation != self._generation:  # first run since a reset: start from zero
                clocks.ns[:] = [0] * len(clocks.ns)
                clocks.calls[:] = [0] * len(clocks.calls)
                clocks.generation = self._generation
                self._clocks.append(clocks)
        try:
            self.inner.run(timed, event, phase)
        finally:
            if plan.event is FitEnd and self.print_report:
                self._print()

    def reset(self) -> None:
        """Forget the totals so far (done at every ``FitBegin``)."""
        self._clocks = []
        # Each plan's clocks are zeroed in place the next time it runs, and counted again.
        self._generation += 1

    def totals(self) -> list[HandlerTime]:
        """Every handler that ran since the last ``FitBegin``, the most time first."""
        summed: dict[tuple[str, str, str], list[int]] = {}
        for clocks in self._clocks:
            event, phase = clocks.plan.event.__name__, clocks.plan.phase.__name__
            for label, ns, calls in zip(clocks.plan.labels, clocks.ns, clocks.calls):
                if calls:
                    entry = summed.setdefault((label, event, phase), [0, 0])
                    entry[0] += calls
                    entry[1] += ns
        rows = [HandlerTime(*key, calls, ns) for key, (calls, ns) in summed.items()]
        return sorted(rows, key=lambda row: (-row.total_ns, row.handler, row.event, row.phase))

    def report(self) -> str:
        """The table ``FitEnd`` prints, as plain text."""
        rows = [_HEADER, *(_cells(r) for r in self.totals())]
        widths = [max(len(row[i]) for row in rows) for i in range(len(_HEADER))]
        lines = []
        for row in rows:
            # Names left-aligned, numbers right-aligned.
            cells = [c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
            lines.append("  ".join(cells).rstrip())
        return "\n".join([self._summary(), *lines])

    def _summary(self) -> str:
        rows = self.totals()
        total = sum(r.total_ns for r in rows) / 1e6
        return f"CallbackTimer: {total:.3f} ms in {sum(r.calls for r in rows)} handler calls"

    def _print(self) -> None:
        console = Console()
        if not console.is_terminal:
            print(self.report())
            return
        table = Table(title=self._summary())
        for i, name in enumerate(_HEADER):
            table.add_column(name, justify="left" if i < 3 else "right", overflow="fold")
        for r in self.totals():
            table.add_row(*_cells(r))
        console.print(table)

    def _time(self, plan: Plan) -> tuple[Plan, _Clocks]:
        size = len(plan.calls)
        clocks = _Clocks(plan, [0] * size, [0] * size, self._generation)
        calls = tuple((_clocked(handler, clocks, i), view) for i, (handler, view) in enumerate(plan.calls))
        timed = dataclasses.replace(plan, calls=calls, cache={})
        plan.cache[self._key] = (timed, clocks)
        self._clocks.append(clocks)
        return timed, clocks

    def __repr__(self) -> str:
        return f"CallbackTimer({self.inner!r})"


_TIMER_IDS = itertools.count()
_HEADER = ("handler", "event", "phase", "calls", "total ms", "mean µs")


def _cells(r: HandlerTime) -> tuple[str, ...]:
    return (r.handler, r.event, r.phase, str(r.calls), f"{r.total_ms:.3f}", f"{r.mean_us:.1f}")


def _clocked(handler: HandlerCall, clocks: _Clocks, position: int) -> HandlerCall:
    clock, ns, calls = time.perf_counter_ns, clocks.ns, clocks.calls

    def timed(event: Event, phase: Phase, learner: Any) -> Any:
        start = clock()
        try:
            return handler(event, phase, learner)
        finally:
            ns[position] += clock() - start
            calls[position] += 1

    return timed
