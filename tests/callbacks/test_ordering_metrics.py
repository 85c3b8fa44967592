"""Pairs that are ordering bugs in other libraries come out right here in either list order:
the graph runs Metrics (which writes cbstate.metrics) before the callbacks that read it."""

from __future__ import annotations

import io
import itertools
from typing import Any

import pytest
from helpers import run_order
from rich.console import Console

from cadence import Callback, Metrics, Recorder
from cadence.callbacks.early_stopping import EarlyStopping
from cadence.callbacks.metrics import MetricSpec
from cadence.callbacks.metrics_printer import MetricsPrinter
from cadence.callbacks.nan import StopOnNaNLoss
from cadence.callbacks.progress import ProgressPrinter
from cadence.events import EpochEnd
from cadence.phases import ValidationPhase
from cadence.testing import make_test_learner, regression_batches

BOTH_ORDERS = pytest.mark.parametrize("reverse", [False, True], ids=["metrics-first", "metrics-last"])


def ordered(reverse: bool, *callbacks: Callback) -> list[Callback]:
    return list(reversed(callbacks)) if reverse else list(callbacks)


def printer() -> tuple[MetricsPrinter, io.StringIO]:
    out = io.StringIO()
    return MetricsPrinter(console=Console(file=out, width=200)), out


@BOTH_ORDERS
def test_metrics_and_early_stopping(reverse: bool) -> None:
    # The loss falls every epoch, so in mode="max" the second epoch is the first without
    # improvement. A stopper that ran before Metrics would judge the previous epoch's value
    # and stop one epoch late.
    stopper = EarlyStopping("valid/loss", mode="max", patience=0)
    learner = make_test_learner(*ordered(reverse, Metrics(), stopper), lr=0.01)
    assert run_order(learner, EpochEnd, ValidationPhase) == ["Metrics.epoch_end", "EarlyStopping.epoch_end"]
    assert (
        "after Metrics: Metrics writes cbstate.metrics, EarlyStopping reads cbstate.metrics"
        in learner.explain(EpochEnd, ValidationPhase)
    )
    result = learner.fit(10).stopped
    values = learner.cbstate.metrics.epochs["valid/loss"]
    assert result is not None and len(values) == 2
    assert stopper.best == values[0]
    assert result.reason == (
        f"EarlyStopping: valid/loss did not improve by min_delta=0.0 for 1 epoch (best {values[0]:.4g} at epoch 1)."
    )


@BOTH_ORDERS
def test_metrics_and_early_stopping_on_a_metric(reverse: bool) -> None:
    def error(y_pred: Any, y: Any) -> Any:
        return (y_pred - y).abs().mean()

    stopper = EarlyStopping("valid/error", mode="max", patience=0)
    learner = make_test_learner(*ordered(reverse, Metrics(MetricSpec(error, phases="valid")), stopper), lr=0.01)
    assert learner.fit(10).stopped is not None
    assert stopper.best == learner.cbstate.metrics.epochs["valid/error"][0]
    assert len(learner.cbstate.metrics.epochs["valid/error"]) == 2


@BOTH_ORDERS
def test_metrics_and_metrics_printer(reverse: bool) -> None:
    shown, out = printer()
    learner = make_test_learner(*ordered(reverse, Metrics(), shown), lr=0.01)
    assert run_order(learner, EpochEnd, ValidationPhase) == ["Metrics.epoch_end", "MetricsPrinter.validation_end"]
    learner.fit(3)
    epochs = learner.cbstate.metrics.epochs
    rows = [line.split() for line in out.getvalue().splitlines()[1:]]
    # Each row shows that epoch's values, not the previous epoch's.
    expected = [[str(e + 1), f"{epochs['train/loss'][e]:.4f}", f"{epochs['valid/loss'][e]:.4f}"] for e in range(3)]
    assert rows == expected


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_metrics_printer_and_early_stopping_in_any_order(order: tuple[int, ...]) -> None:
    shown, out = printer()
    callbacks: list[Callback] = [Metrics(), shown, EarlyStopping(mode="max", patience=0)]
    learner = make_test_learner(*[callbacks[i] for i in order], lr=0.01)
    assert learner.fit(10).stopped is not None
    # The epoch that decided to stop is printed too, whatever the order.
    assert [line.split()[0] for line in out.getvalue().splitlines()] == ["epoch", "1", "2"]


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_without_validation_the_last_training_row_is_printed_in_any_order(order: tuple[int, ...]) -> None:
    shown, out = printer()
    callbacks: list[Callback] = [Metrics(), shown, EarlyStopping("train/loss", mode="max", patience=0)]
    learner = make_test_learner(*[callbacks[i] for i in order], lr=0.01)
    assert learner.fit(10, data=(regression_batches(4), None)).stopped is not None
    assert [line.split()[0] for line in out.getvalue().splitlines()] == ["epoch", "1", "2"]


def test_the_default_set_builds_in_any_order() -> None:
    def default_set() -> list[Callback]:
        progress = ProgressPrinter(console=Console(file=io.StringIO()))
        return [Recorder(), Metrics(), progress, printer()[0], StopOnNaNLoss()]

    for order in itertools.permutations(range(5)):
        callbacks = default_set()
        learner = make_test_learner(*[callbacks[i] for i in order])
        assert run_order(learner, EpochEnd, ValidationPhase).index("Metrics.epoch_end") < run_order(
            learner, EpochEnd, ValidationPhase
        ).index("MetricsPrinter.validation_end")
    assert learner.fit(1, data=(learner.data[0], None)).stopped is None  # type: ignore[index]
