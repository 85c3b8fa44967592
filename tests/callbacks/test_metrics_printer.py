"""MetricsPrinter: one row per epoch, phases side by side, on a terminal or in plain text."""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch
from rich.console import Console

from cadence import WRITE, Callback, Metrics, on
from cadence.callbacks.metrics import MetricSpec
from cadence.callbacks.metrics_printer import MetricsPrinter
from cadence.events import EpochEnd, Event
from cadence.phases import Phase, ValidationPhase
from cadence.testing import make_test_learner, regression_batches


def plain(**kwargs: Any) -> tuple[MetricsPrinter, io.StringIO]:
    out = io.StringIO()
    return MetricsPrinter(console=Console(file=out, width=200), **kwargs), out


def error(y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (y_pred - y).abs().mean()


def test_plain_rows_with_phases_side_by_side() -> None:
    printer, out = plain()
    metrics = Metrics(error, MetricSpec(error, name="valid_only", phases="valid"))
    learner = make_test_learner(printer, metrics, lr=0.01)
    learner.fit(2)
    epochs = learner.cbstate.metrics.epochs
    columns = ["train/loss", "valid/loss", "train/error", "valid/error", "valid/valid_only"]
    rows = [["epoch", *columns], *[[str(e + 1)] + [f"{epochs[k][e]:.4f}" for k in columns] for e in range(2)]]
    assert [line.split() for line in out.getvalue().splitlines()] == rows
    assert out.getvalue().splitlines()[1] == "    1      2.7706      2.4631       1.4549       1.3720            1.3720"


def test_without_validation_rows_come_at_the_next_epoch_and_at_the_end_of_fit() -> None:
    printer, out = plain()
    learner = make_test_learner(printer, Metrics(), lr=0.01)
    learner.fit(1, data=(regression_batches(4), None))
    assert out.getvalue().splitlines() == ["epoch  train/loss", "    1      2.7074"]
    learner.fit(2)  # the validation column appears: the header is printed again
    assert out.getvalue().splitlines()[2:] == [
        "epoch  train/loss  valid/loss",
        "    2      2.6383      2.3455",
        "    3      2.1229      1.8873",
    ]


def test_a_phase_without_a_new_value_is_left_blank() -> None:
    printer, out = plain()
    learner = make_test_learner(printer, Metrics(), lr=0.01)
    learner.fit(1)
    learner.fit(1, data=(regression_batches(4), None))
    assert out.getvalue().splitlines()[-1] == "    2      2.1785            "


def terminal_rows(epochs: dict[str, list[float]], numbers: range) -> list[str]:
    return [f"{n:>6}{epochs['train/loss'][n - 1]:>13.4f}{epochs['valid/loss'][n - 1]:>13.4f} " for n in numbers]


def test_a_table_on_a_terminal_has_its_header_once_per_fit() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, color_system=None, width=100)
    learner = make_test_learner(MetricsPrinter(console=console), Metrics(), lr=0.01)
    learner.fit(3)
    header = [" epoch   train/loss   valid/loss ", "─" * 33]
    epochs = learner.cbstate.metrics.epochs
    assert out.getvalue().splitlines() == [*header, *terminal_rows(epochs, range(1, 4))]
    assert out.getvalue().splitlines()[2] == "     1       2.7706       2.4631 "
    learner.fit(1)  # a new fit: the header again
    assert out.getvalue().splitlines()[5:] == [*header, *terminal_rows(epochs, range(4, 5))]


def test_on_a_terminal_new_columns_bring_a_new_header() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, color_system=None, width=100)

    class Late(Callback):  # a metric that starts in epoch 2
        state_access = {"cbstate.metrics": WRITE}
        run_after = (Metrics,)

        @on(EpochEnd, phase=ValidationPhase)
        def add(self, event: Event, phase: Phase, learner: Any) -> None:
            if learner.cbstate.metrics.epochs["valid/loss"][1:]:
                learner.cbstate.metrics.epochs.setdefault("valid/late", []).append(0.5)

    learner = make_test_learner(MetricsPrinter(console=console), Metrics(), Late(), lr=0.01)
    learner.fit(3)
    lines = [line.strip() for line in out.getvalue().splitlines()]
    assert lines.count("epoch   train/loss   valid/loss") == 1
    assert lines.count("epoch   train/loss   valid/loss   valid/late") == 1
    assert lines[-1].endswith("0.5000") and lines[-1].startswith("3 ")


def test_plain_text_has_its_header_once_per_fit_too() -> None:
    printer, out = plain()
    learner = make_test_learner(printer, Metrics(), lr=0.01)
    learner.fit(2)
    learner.fit(1)
    assert [line.split()[0] for line in out.getvalue().splitlines()] == ["epoch", "1", "2", "epoch", "3"]


@pytest.mark.parametrize(
    ("value", "digits", "shown"),
    [(0.123456, 4, "0.1235"), (0.0, 4, "0.0000"), (1.5e-7, 4, "1.5000e-07"), (float("nan"), 2, "nan"), (2e6, 1, "2.0e+06")],
)
def test_number_format(value: float, digits: int, shown: str) -> None:
    assert MetricsPrinter(digits=digits)._format(value) == shown


def test_digits_must_be_an_int_in_range() -> None:
    with pytest.raises(ValueError, match=r"MetricsPrinter\(digits=...\) expects an int from 0 to 12; got 20\."):
        MetricsPrinter(digits=20)


def test_an_evaluation_prints_its_row_when_it_ends() -> None:
    printer, out = plain()
    learner = make_test_learner(printer, Metrics(), lr=0.01, n_batches=4)
    learner.fit(1)
    loss = learner.validate()["loss"]
    learner.fit(1)  # the evaluation's value is not shown again
    second = learner.validate()["loss"]
    lines = [line.split() for line in out.getvalue().splitlines()]
    # Labelled as evaluations, not as a first epoch under the training columns.
    assert lines[2:4] == [["epoch", "train/loss", "valid/loss", "eval/loss"], ["eval", "1", f"{loss:.4f}"]]
    assert len(lines[4]) == 3 and lines[4][0] == "2"
    assert lines[-1] == ["eval", "2", f"{second:.4f}"]
