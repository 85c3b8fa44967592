"""MetricsPrinter: one table row per epoch, training and validation metrics side by side."""

from __future__ import annotations

import math
from typing import Any

import rich
from rich import box
from rich.console import Console
from rich.table import Column, Table

from cadence import READ, Callback, on
from cadence.events import EpochBegin, EpochEnd, Event, FitEnd
from cadence.inference import EvaluationPhase
from cadence.phases import Phase, TrainingPhase, ValidationPhase

__all__ = ["MetricsPrinter"]


class MetricsPrinter(Callback):
    """Prints each epoch's values from ``cbstate.metrics``: the epoch number, then every
    metric with its phases side by side (``train/loss``, ``valid/loss``, ``train/accuracy``, ...).

    The row of an epoch is printed when its validation epoch ends, or, when no validation
    follows the training epoch, when the next training epoch begins or ``fit`` ends. A key with
    no new value since the last row is left blank. ``epoch`` is the number of values the row's
    keys have (in a fit, the training epoch, counting those restored from a checkpoint). An
    evaluation (``learner.validate``) prints its row when it ends, labelled ``eval 1``,
    ``eval 2``, ... (it counts evaluations, not epochs), its values under the ``eval/`` columns.

    On a terminal it prints the rows of a rich table, elsewhere (CI logs, pipes) plain aligned
    text; either way the header comes once per ``fit``, and again only when the columns change.
    In a distributed fit it prints on rank 0 only (``placement = "rank_zero"``) the values
    ``Metrics`` reduced over every rank's data.

    Args:
        console: Where to print; rich's global console (standard output) by default.
        digits: Decimal places shown.

    Example:
        >>> from cadence import Metrics
        >>> from cadence.testing import make_test_learner
        >>> learner = make_test_learner(MetricsPrinter(), Metrics(), lr=0.01)
        >>> _ = learner.fit(2)
        epoch  train/loss  valid/loss
            1      2.7706      2.4631
            2      2.2294      1.9819
    """

    state_access = {"cbstate.metrics": READ}
    reset_when = "learner"
    placement = "rank_zero"

    def __init__(self, *, console: Console | None = None, digits: int = 4) -> None:
        if isinstance(digits, bool) or not isinstance(digits, int) or not 0 <= digits <= 12:
            raise ValueError(f"MetricsPrinter(digits=...) expects an int from 0 to 12; got {digits!r}.")
        self.console, self.digits = console, digits
        self._printed: dict[str, int] = {}  # key -> number of its values already printed
        self._header: list[str] = []  # the columns under the last header printed
        self._widths: list[int] = []  # and their widths, which the rows below it keep
        self._pending = False  # a training epoch ended and its row is not printed yet

    def reset(self) -> None:
        """A fit in another learner prints its table from its first epoch (a second fit of
        the same learner goes on numbering, under a header of its own)."""
        self._printed.clear()
        self._header = []
        self._pending = False

    @on(EpochEnd, phase=TrainingPhase)
    def training_end(self, event: Event, phase: Phase, learner: Any) -> None:
        self._pending = True

    @on(EpochEnd, phase=ValidationPhase)
    def validation_end(self, event: Event, phase: Phase, learner: Any) -> None:
        self._print_row(learner.cbstate.metrics.epochs)

    @on(EpochEnd, phase=EvaluationPhase)
    def evaluation_end(self, event: Event, phase: Phase, learner: Any) -> None:
        self._print_row(learner.cbstate.metrics.epochs, label=f"{phase.name} ")

    @on(EpochBegin, phase=TrainingPhase)
    def training_begin(self, event: Event, phase: Phase, learner: Any) -> None:
        if self._pending:
            self._print_row(learner.cbstate.metrics.epochs)

    @on(FitEnd)
    def fit_end(self, event: Event, phase: Phase, learner: Any) -> None:
        if self._pending:
            self._print_row(learner.cbstate.metrics.epochs)
        self._header = []  # the next fit starts with a header

    def _print_row(self, epochs: dict[str, list[float]], label: str = "") -> None:
        self._pending = False
        new = {k: v for k, v in epochs.items() if v and len(v) > self._printed.get(k, 0)}
        if not new:
            return
        self._printed.update({k: len(v) for k, v in new.items()})
        columns = _columns(list(epochs))
        cells = [f"{label}{max(len(v) for v in new.values())}"]
        cells += [self._format(new[k][-1]) if k in new else "" for k in columns]
        header = columns != self._header
        if header:
            self._header, self._widths = columns, [5, *(max(len(c), 10) for c in columns)]
        widths = self._widths
        console = self.console if self.console is not None else rich.get_console()
        if console.is_terminal or console.is_jupyter:
            # One table per row, of the same column widths: only the first shows the header.
            names = ["epoch", *columns]
            table = Table(
                *(Column(name, justify="right", min_width=width) for name, width in zip(names, widths)),
                box=box.SIMPLE_HEAD, show_header=header, show_edge=False,
            )
            table.add_row(*cells)
            console.print(table)
            return
        rows = [["epoch", *columns], cells] if header else [cells]
        lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows]
        console.out("\n".join(lines), highlight=False)

    def _format(self, value: float) -> str:
        if math.isfinite(value) and value != 0 and not 10**-self.digits <= abs(value) < 1e6:
            return f"{value:.{self.digits}e}"
        return f"{value:.{self.digits}f}"


def _columns(keys: list[str]) -> list[str]:
    """Group keys by metric name, phases side by side, both in order of first appearance."""
    names: dict[str, None] = {}
    phases: dict[str, None] = {}
    for key in keys:
        phase, _, name = key.partition("/")
        names.setdefault(name)
        phases.setdefault(phase)
    present = set(keys)
    return [f"{p}/{n}" for n in names for p in phases if f"{p}/{n}" in present]
