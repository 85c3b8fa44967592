"""ProgressPrinter: a live progress bar per phase epoch, or plain lines where there is no terminal."""

from __future__ import annotations

import sys
import time
from collections import Counter
from typing import Any

import rich
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from cadence import READ, Callback, on
from cadence.events import BatchEnd, EpochBegin, EpochEnd, Event, FitEnd
from cadence.phases import Phase

__all__ = ["ProgressPrinter"]


class _Bar:
    """One running phase epoch: batches done (``resumed`` of them before a resume, which the
    rate leaves out) and when to look at the clock next."""

    __slots__ = ("label", "total", "n", "resumed", "start", "next_check", "next_draw", "task")

    def __init__(self, label: str, total: int | None, start: float, interval: float) -> None:
        self.label, self.total, self.n, self.resumed, self.start = label, total, 0, 0, start
        self.next_check, self.next_draw = 1, start + interval
        self.task: TaskID | None = None


class _Bars(dict[type[Phase], _Bar]):
    def __missing__(self, kind: type[Phase]) -> _Bar:
        # A batch outside any epoch (learner.step): a throwaway bar, never kept nor drawn.
        outside = _Bar("", None, 0.0, 0.0)
        outside.next_check = sys.maxsize
        return outside


class ProgressPrinter(Callback):
    """Shows each phase epoch's progress: batches done, the last batch's loss (labelled so; the
    epoch's mean loss is ``MetricsPrinter``'s) and batches per second.

    On a terminal (or in Jupyter) it draws a rich progress bar; elsewhere (CI logs, pipes) it
    prints a plain line every ``line_seconds`` and one when the epoch ends. The total comes from
    ``len()`` of the data being iterated (``EpochBegin.data``), when it has one.

    A batch costs a counter increment and a comparison: the clock is read only every few
    batches (spaced from the observed speed), and the loss is read (a device sync) and the bar
    redrawn only when ``refresh_seconds`` have passed.

    In a distributed fit it runs on rank 0 only (``placement = "rank_zero"``) and shows rank
    0's batches and loss.

    Args:
        console: Where to draw; rich's global console (standard output) by default. Share it
            with other printers (``MetricsPrinter`` uses the same default) so that their output
            appears above the bar.
        refresh_seconds: Least time between two redraws of a bar.
        line_seconds: Least time between two plain lines within an epoch.
        transient: Remove each bar when its epoch ends (plain lines always stay).

    Example:
        >>> from cadence.testing import make_test_learner
        >>> learner = make_test_learner(ProgressPrinter())
        >>> _ = learner.fit(1)  # doctest: +ELLIPSIS
        train epoch 1: 16/16 batches, last batch loss ..., ... batches/s
        valid epoch 1: 16/16 batches, last batch loss ..., ... batches/s
    """

    state_access = {"batch.loss": READ}
    reset_when = "learner"
    placement = "rank_zero"

    def __init__(
        self,
        *,
        console: Console | None = None,
        refresh_seconds: float = 0.25,
        line_seconds: float = 30.0,
        transient: bool = True,
    ) -> None:
        for name, value in (("refresh_seconds", refresh_seconds), ("line_seconds", line_seconds)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(
                    f"ProgressPrinter({name}=...) expects a positive number of seconds; got {value!r}."
                )
        self.console = console
        self.refresh_seconds, self.line_seconds, self.transient = refresh_seconds, line_seconds, transient
        self._bars = _Bars()
        self._epochs: Counter[str] = Counter()
        self._progress: Progress | None = None
        self._live = False  # drawing bars (terminal) rather than lines

    def _console(self) -> Console:
        return self.console if self.console is not None else rich.get_console()

    @on(EpochBegin)
    def epoch_begin(self, event: EpochBegin, phase: Phase, learner: Any) -> None:
        console = self._console()
        self._live = (console.is_terminal and not console.is_dumb_terminal) or console.is_jupyter
        self._epochs[phase.name] += 1
        try:
            total: int | None = len(event.data)  # type: ignore[arg-type]
        except TypeError:
            total = None
        interval = self.refresh_seconds if self._live else self.line_seconds
        bar = self._bars[type(phase)] = _Bar(self._label(phase.name), total, time.monotonic(), interval)
        if self._live:
            progress, started = self._progress, self._progress is not None
            if progress is None:
                progress = self._progress = Progress(
                    TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("last batch loss {task.fields[loss]}"), TextColumn("{task.fields[rate]}"),
                    TimeElapsedColumn(), console=console, auto_refresh=False, transient=self.transient,
                )
            bar.task = progress.add_task(bar.label, total=total, loss="-", rate="")
            if started:
                progress.refresh()
            else:
                progress.start()

    @on(BatchEnd)
    def batch_end(self, event: Event, phase: Phase, learner: Any) -> None:
        bar = self._bars[phase.__class__]
        bar.n += 1
        if bar.n >= bar.next_check:
            self._tick(bar, learner)

    def _tick(self, bar: _Bar, learner: Any) -> None:
        now = time.monotonic()
        interval = self.refresh_seconds if self._live else self.line_seconds
        if now >= bar.next_draw:
            self._draw(bar, learner.batch.loss, now)
            bar.next_draw = now + interval
        # Look at the clock about four times per interval at the speed seen so far.
        rate = (bar.n - bar.resumed) / max(now - bar.start, 1e-9)
        bar.next_check = bar.n + max(1, min(1000, int(rate * interval / 4)))

    def _draw(self, bar: _Bar, loss: Any, now: float) -> None:
        shown = "-" if loss is None or not bar.n else f"{float(loss):.4f}"
        rate = f"{(bar.n - bar.resumed) / max(now - bar.start, 1e-9):.1f} batches/s"
        if self._progress is not None and bar.task is not None:
            self._progress.update(bar.task, completed=bar.n, loss=shown, rate=rate, refresh=True)
        else:
            done = f"{bar.n}/{bar.total}" if bar.total is not None else f"{bar.n}"
            self._console().out(f"{bar.label}: {done} batches, last batch loss {shown}, {rate}", highlight=False)

    @on(EpochEnd)
    def epoch_end(self, event: Event, phase: Phase, learner: Any) -> None:
        bar = self._bars.pop(type(phase), None)
        if bar is None:
            return
        self._draw(bar, learner.batch.loss, time.monotonic())
        if self._progress is not None and bar.task is not None:
            if self.transient:
                self._progress.remove_task(bar.task)
            if not any(b.task is not None for b in self._bars.values()):
                self._close()

    @on(FitEnd)
    def fit_end(self, event: Event, phase: Phase, learner: Any) -> None:
        self._bars.clear()  # after an exception or CancelFit, epochs may not have ended
        self._close()

    def _close(self) -> None:
        if self._progress is not None:
            progress, self._progress = self._progress, None
            progress.stop()

    def _label(self, phase_name: str) -> str:
        return f"{phase_name} epoch {self._epochs[phase_name]}"

    def reset(self) -> None:
        """A fit in another learner numbers its epochs from 1 (a second fit of the same
        learner goes on numbering)."""
        self._epochs.clear()
        self._bars.clear()

    def state_dict(self) -> dict[str, Any]:
        """Epochs begun per phase name, so that numbering goes on after a resume, and the
        batches done in each epoch under way, so that its bar goes on from there."""
        batches = {kind.name: bar.n for kind, bar in self._bars.items()}
        return {"epochs": dict(self._epochs), "batches": batches}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned. A bar already open (a resume in the middle of
        an epoch restores after its ``EpochBegin``) stays open and goes on with the saved
        epoch number and batches done."""
        self._epochs = Counter({str(k): int(v) for k, v in state["epochs"].items()})
        batches = state.get("batches", {})  # no "batches" in older checkpoints
        for kind, bar in self._bars.items():
            bar.label = self._label(kind.name)
            if kind.name in batches:
                bar.n = bar.resumed = int(batches[kind.name])
            if self._progress is not None and bar.task is not None:
                self._progress.update(bar.task, description=bar.label, completed=bar.n, refresh=True)
