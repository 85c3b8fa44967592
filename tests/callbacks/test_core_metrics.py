"""Metrics: the loss per step and per epoch, weighted by batch size, with flat memory."""

from __future__ import annotations

import pytest
import torch

from cadence import Metrics
from cadence.callbacks.metrics import MetricValues
from cadence.phases import Phase, TrainingPhase
from cadence.testing import make_test_learner, regression_batches


def test_keys_are_phase_name_slash_metric() -> None:
    learner = make_test_learner(Metrics())
    learner.fit(2)
    metrics = learner.cbstate.metrics
    assert set(metrics.epochs) == {"train/loss", "valid/loss"}
    assert set(metrics.step) == {"train/loss", "valid/loss"}
    assert all(len(values) == 2 for values in metrics.epochs.values())
    assert all(isinstance(value, float) for value in metrics.epochs["valid/loss"])


def test_epoch_value_is_weighted_by_batch_size() -> None:
    train = regression_batches(2, 8)
    x = torch.linspace(-1, 1, 11).unsqueeze(1)
    y = x**2
    valid = [(x[:5], y[:5]), (x[5:10], y[5:10]), (x[10:], y[10:])]  # the last batch has one sample
    learner = make_test_learner(Metrics())
    learner.fit(1, data=(train, valid))
    with torch.no_grad():
        exact = torch.nn.functional.mse_loss(learner.model(x).double(), y.double()).item()
        unweighted = sum(float(torch.nn.functional.mse_loss(learner.model(a), b)) for a, b in valid) / 3
    got = learner.cbstate.metrics.last("valid/loss")
    assert got == pytest.approx(exact, rel=1e-6)
    assert got != pytest.approx(unweighted, rel=1e-3)


def test_step_values_are_detached_tensors() -> None:
    learner = make_test_learner(Metrics(), n_batches=3)
    learner.fit(1, data=(learner.data[0], None))  # type: ignore[index]
    step = learner.cbstate.metrics.step["train/loss"]
    assert isinstance(step, torch.Tensor)
    assert step.dim() == 0 and not step.requires_grad


def test_memory_stays_flat() -> None:
    learner = make_test_learner(Metrics(), n_batches=8)
    learner.fit(4)
    metrics = learner.cbstate.metrics
    # One latest value per key, one float per epoch: nothing grows with the number of steps.
    assert len(metrics.step) == 2
    assert {key: len(values) for key, values in metrics.epochs.items()} == {"train/loss": 4, "valid/loss": 4}
    assert not any(t.requires_grad for t in metrics.step.values())


def test_init_keeps_existing_metrics() -> None:
    learner = make_test_learner(Metrics(), n_batches=2)
    learner.fit(1)
    metrics = learner.cbstate.metrics
    learner.replace_callback(Metrics())
    learner.fit(1)
    assert learner.cbstate.metrics is metrics
    assert len(metrics.epochs["train/loss"]) == 2


def test_last_reports_missing_keys() -> None:
    values = MetricValues()
    with pytest.raises(KeyError, match=r"No epoch value for 'valid/loss' yet; known keys: none\."):
        values.last("valid/loss")
    values.epochs["train/loss"] = [1.0, 0.5]
    assert values.last("train/loss") == 0.5
    with pytest.raises(KeyError, match=r"known keys: \['train/loss'\]"):
        values.last("valid/loss")


def test_phase_names_make_the_keys() -> None:
    assert Phase.name == "fit"
    assert TrainingPhase.name == "train"
