"""ProgressPrinter: a rich bar on a terminal, plain lines elsewhere, throttled, always closed."""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from cadence import Callback, CancelFit, Metrics, on
from cadence.callbacks import progress as progress_module
from cadence.callbacks.checkpointer import Checkpointer
from cadence.callbacks.metrics_printer import MetricsPrinter
from cadence.callbacks.progress import ProgressPrinter
from cadence.checkpointing.files import list_checkpoints
from cadence.events import BatchEnd
from cadence.phases import TrainingPhase
from cadence.testing import make_test_learner, regression_batches


def plain() -> tuple[ProgressPrinter, io.StringIO]:
    out = io.StringIO()
    return ProgressPrinter(console=Console(file=out, width=200)), out


def terminal(**kwargs: Any) -> tuple[ProgressPrinter, io.StringIO]:
    out = io.StringIO()
    return ProgressPrinter(console=Console(file=out, force_terminal=True, width=120), **kwargs), out


class FakeClock:
    """Stands in for the ``time`` module: each reading advances by ``tick`` seconds."""

    def __init__(self, tick: float) -> None:
        self.now, self.tick, self.reads = 0.0, tick, 0

    def monotonic(self) -> float:
        self.reads += 1
        self.now += self.tick
        return self.now


LINE = r"{} epoch {}: {} batches, last batch loss \d+\.\d{{4}}, \d+\.\d batches/s"


def test_plain_lines_when_the_output_is_not_a_terminal() -> None:
    printer, out = plain()
    make_test_learner(printer).fit(2)
    lines = out.getvalue().splitlines()
    assert len(lines) == 4
    for line, (phase, epoch) in zip(lines, [("train", 1), ("valid", 1), ("train", 2), ("valid", 2)]):
        assert re.fullmatch(LINE.format(phase, epoch, "16/16"), line), line


def test_the_default_console_is_standard_output(capsys: pytest.CaptureFixture[str]) -> None:
    make_test_learner(ProgressPrinter()).fit(1)
    assert re.match(LINE.format("train", 1, "16/16"), capsys.readouterr().out)


def test_the_data_being_iterated_gives_the_total() -> None:
    printer, out = plain()
    learner = make_test_learner(printer)
    learner.fit(1, data=(regression_batches(5), None))
    learner.fit(1, data=(iter(regression_batches(3)), None))  # no len(): no total
    lines = out.getvalue().splitlines()
    assert re.fullmatch(LINE.format("train", 1, "5/5"), lines[0])
    assert re.fullmatch(LINE.format("train", 2, "3"), lines[1])


def test_plain_lines_are_throttled_by_time(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock(tick=1.0)  # every clock reading is a second later
    monkeypatch.setattr(progress_module, "time", clock)
    printer, out = plain()
    printer.line_seconds = 3.0
    make_test_learner(printer, n_batches=12).fit(1, data=(regression_batches(12), None))
    lines = out.getvalue().splitlines()
    assert 2 <= len(lines) <= 7
    assert lines[-1].startswith("train epoch 1: 12/12 batches")


def test_the_clock_is_read_every_few_batches_only(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock(tick=1e-5)  # fast batches
    monkeypatch.setattr(progress_module, "time", clock)
    printer, out = plain()
    make_test_learner(printer).fit(1, data=(regression_batches(2000, 1), None))
    assert clock.reads < 20
    assert out.getvalue().count("\n") == 1  # no line before the end: 30 s never passed


def test_a_bar_on_a_terminal() -> None:
    printer, out = terminal(transient=False)
    make_test_learner(printer).fit(1)
    text = out.getvalue()
    assert "train epoch 1" in text and "valid epoch 1" in text
    assert "16/16" in text and "last batch loss 0." in text and "batches/s" in text
    assert printer._progress is None  # closed at the end of the epoch


def test_the_bar_is_closed_after_an_exception() -> None:
    class Boom(Callback):
        @on(BatchEnd, phase=TrainingPhase)
        def boom(self, event: Any, phase: Any, learner: Any) -> None:
            raise RuntimeError("boom")

    stdout = sys.stdout
    printer, _ = terminal()
    with pytest.raises(RuntimeError, match="boom"):
        make_test_learner(printer, Boom()).fit(1)
    assert printer._progress is None and sys.stdout is stdout


def test_the_bar_is_closed_after_cancel_fit() -> None:
    class Stop(Callback):
        @on(BatchEnd, phase=TrainingPhase)
        def stop(self, event: Any, phase: Any, learner: Any) -> None:
            raise CancelFit("enough")

    printer, _ = terminal()
    assert make_test_learner(printer, Stop()).fit(1).stopped is not None
    assert printer._progress is None


def test_learner_step_outside_an_epoch_draws_nothing() -> None:
    printer, out = plain()
    learner = make_test_learner(printer)
    learner.step(TrainingPhase(), regression_batches(1)[0])
    assert out.getvalue() == ""


def test_steps_outside_an_epoch_leave_no_count_behind() -> None:
    printers = [plain()[0] for _ in range(2)]
    learners = [make_test_learner(printer) for printer in printers]
    for learner in learners:
        for batch in regression_batches(3):
            learner.step(TrainingPhase(), batch)
    for printer in printers:
        assert printer.state_dict() == {"epochs": {}, "batches": {}}
        outside = printer._bars[TrainingPhase]
        assert outside.n == 0 and outside is not printer._bars[TrainingPhase]


@pytest.mark.parametrize("name", ["refresh_seconds", "line_seconds"])
def test_intervals_must_be_positive(name: str) -> None:
    with pytest.raises(ValueError, match=rf"ProgressPrinter\({name}=...\) expects a positive number of seconds; got 0\."):
        kwargs: dict[str, Any] = {name: 0}
        ProgressPrinter(**kwargs)


def test_state_dict_keeps_the_epoch_numbering() -> None:
    printer, out = plain()
    make_test_learner(printer, n_batches=2).fit(2)
    assert printer.state_dict() == {"epochs": {"train": 2, "valid": 2}, "batches": {}}
    resumed, out = plain()
    resumed.load_state_dict(printer.state_dict())
    make_test_learner(resumed, n_batches=2).fit(1)
    assert out.getvalue().startswith("train epoch 3: 2/2 batches")


def mid_epoch_checkpoint(folder: Path) -> Path:
    """A checkpoint after 8 of the 16 training batches of epoch 2."""
    printer, _ = plain()
    make_test_learner(printer, Checkpointer(folder, every_steps=4, keep_last=100)).fit(2)
    return next(p for p in list_checkpoints(folder) if p.name.endswith("epoch1-batch8.pt"))


def test_a_mid_epoch_resume_goes_on_with_the_epoch_number_and_batches_done(tmp_path: Path) -> None:
    path = mid_epoch_checkpoint(tmp_path)
    printer, out = plain()
    make_test_learner(printer, Checkpointer(tmp_path / "again")).fit(2, resume=path)
    lines = out.getvalue().splitlines()
    assert re.fullmatch(LINE.format("train", 2, "16/16"), lines[0])
    assert re.fullmatch(LINE.format("valid", 2, "16/16"), lines[1]) and len(lines) == 2


def test_a_mid_epoch_resume_keeps_the_bar_open(tmp_path: Path) -> None:
    path = mid_epoch_checkpoint(tmp_path)
    printer, out = terminal(transient=False, refresh_seconds=60)  # drawn at EpochEnd only
    seen: list[tuple[bool, str, float]] = []

    class Peek(Callback):
        @on(BatchEnd, phase=TrainingPhase)
        def peek(self, event: Any, phase: Any, learner: Any) -> None:
            progress = printer._progress
            task = progress.tasks[0] if progress is not None else None
            seen.append((progress is not None and progress.live.is_started, task.description if task else "", task.completed if task else -1))

    make_test_learner(printer, Peek(), Checkpointer(tmp_path / "again")).fit(2, resume=path)
    assert seen[0] == (True, "train epoch 2", 8)  # the batch after the checkpoint, before the printer drew it
    assert len(seen) == 8 and all(started for started, *_ in seen)
    assert "train epoch 2" in out.getvalue() and "16/16" in out.getvalue() and printer._progress is None


def test_a_table_printed_on_the_same_console_appears_with_the_bars() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100, color_system=None)
    progress = ProgressPrinter(console=console)
    learner = make_test_learner(MetricsPrinter(console=console), progress, Metrics(), lr=0.01)
    learner.fit(2)
    text = out.getvalue()
    assert text.count("epoch   train/loss   valid/loss") == 1  # the header once per fit
    assert "valid epoch 2" in text and progress._progress is None
