"""Metrics with torchmetrics and functions: names, per-phase selection, exact epoch values."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from cadence import Callback, Learner, Metrics, on, READ
from cadence.callbacks import metrics as metrics_module
from cadence.callbacks.metrics import MetricSpec, MetricValues
from cadence.events import BatchEnd
from cadence.phases import TrainingPhase, ValidationPhase
from cadence.testing import make_test_learner

N_CLASSES = 3


def classification_data(n: int = 57, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=generator)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return x, y


def batched(x: torch.Tensor, y: torch.Tensor, size: int = 10) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]  # the last batch is short


def classifier(*callbacks: Callback, lr: float = 0.5) -> Learner:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, N_CLASSES)
    batches = batched(*classification_data())
    return Learner(
        model,
        torch.nn.functional.cross_entropy,
        torch.optim.SGD(model.parameters(), lr=lr),
        data=(batches, batches),
        callbacks=list(callbacks),
        default_callbacks=False,
    )


def accuracy_fn(y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (y_pred.argmax(dim=1) == y).float().mean()


class BatchLog(Callback):
    """Records each training batch's loss and size."""

    state_access = {"batch.loss": READ, "batch.y": READ}

    def __init__(self) -> None:
        self.seen: list[tuple[float, int]] = []

    @on(BatchEnd, phase=TrainingPhase)
    def log(self, event: Any, phase: Any, learner: Any) -> None:
        self.seen.append((float(learner.batch.loss), len(learner.batch.y)))


def test_validation_epoch_values_are_exact_over_the_whole_dataset() -> None:
    metrics = Metrics(
        MulticlassAccuracy(num_classes=N_CLASSES, average="micro"),
        MulticlassF1Score(num_classes=N_CLASSES, average="macro"),
        accuracy_fn,
    )
    learner = classifier(metrics)
    learner.fit(2)
    x, y = classification_data()
    with torch.no_grad():
        y_pred = learner.model(x)
    values = learner.cbstate.metrics
    exact_accuracy = float((y_pred.argmax(1) == y).float().mean())
    exact_loss = float(torch.nn.functional.cross_entropy(y_pred, y))
    assert values.last("valid/loss") == pytest.approx(exact_loss, rel=1e-6)
    assert values.last("valid/accuracy") == pytest.approx(exact_accuracy, rel=1e-6)
    assert values.last("valid/accuracy_fn") == pytest.approx(exact_accuracy, rel=1e-6)
    exact_f1 = MulticlassF1Score(num_classes=N_CLASSES, average="macro")(y_pred, y)
    assert values.last("valid/f1_score") == pytest.approx(float(exact_f1), rel=1e-6)
    assert {len(v) for v in values.epochs.values()} == {2}


def test_training_epoch_value_is_the_batch_size_weighted_mean() -> None:
    log = BatchLog()
    learner = classifier(Metrics(), log)
    learner.fit(1)
    expected = sum(loss * size for loss, size in log.seen) / sum(size for _, size in log.seen)
    assert learner.cbstate.metrics.last("train/loss") == pytest.approx(expected, rel=1e-6)
    assert log.seen[-1][1] == 7  # the short last batch weighs less


def test_stateful_metrics_reset_every_epoch_and_keep_one_state_per_phase() -> None:
    learner = classifier(Metrics(MulticlassAccuracy(num_classes=N_CLASSES)), lr=2.0)
    learner.fit(3)
    x, y = classification_data()
    with torch.no_grad():
        exact = float(MulticlassAccuracy(num_classes=N_CLASSES)(learner.model(x), y))
    epochs = learner.cbstate.metrics.epochs
    assert epochs["valid/accuracy"][-1] == pytest.approx(exact)
    assert epochs["train/accuracy"] != epochs["valid/accuracy"]


def test_a_metric_can_be_limited_to_some_phases() -> None:
    metrics = Metrics(
        MetricSpec(MulticlassAccuracy(num_classes=N_CLASSES), phases="valid"),
        MetricSpec(accuracy_fn, name="acc", phases=[TrainingPhase]),
    )
    learner = classifier(metrics)
    learner.fit(1)
    values = learner.cbstate.metrics
    assert sorted(values.epochs) == ["train/acc", "train/loss", "valid/accuracy", "valid/loss"]
    assert sorted(values.step) == ["train/acc", "train/loss", "valid/loss"]  # torchmetrics: no step value
    assert values.keys >= {"train/acc", "train/loss", "valid/accuracy", "valid/loss"}
    assert "train/accuracy" not in values.keys and "valid/acc" not in values.keys


def test_the_planned_keys_are_known_when_the_learner_is_built() -> None:
    learner = classifier(Metrics(MetricSpec(accuracy_fn, phases=ValidationPhase)))
    assert learner.cbstate.metrics.keys >= {"train/loss", "valid/loss", "valid/accuracy_fn"}
    assert learner.cbstate.metrics.epochs == {}


@pytest.mark.parametrize(
    ("metric", "name"),
    [
        (MulticlassAccuracy(num_classes=3), "accuracy"),
        (MulticlassF1Score(num_classes=3), "f1_score"),
        (accuracy_fn, "accuracy_fn"),
        (MetricSpec(accuracy_fn, name="acc"), "acc"),
    ],
)
def test_names(metric: Any, name: str) -> None:
    learner = make_test_learner(Metrics(metric))
    assert f"valid/{name}" in learner.cbstate.metrics.keys


def test_a_lambda_needs_a_name() -> None:
    fix = r"Name it: MetricSpec\(metric, name=\"my_metric\"\)\."
    with pytest.raises(ValueError, match=r"Metrics cannot name test_a_lambda_needs_a_name.<locals>.<lambda>: .*" + fix):
        Metrics(lambda y_pred, y: (y_pred - y).abs().mean())


def test_loss_is_a_reserved_name() -> None:
    with pytest.raises(ValueError, match=r"cannot use the name 'loss': \"loss\" is always the loss.*name=\"my_metric\""):
        Metrics(MetricSpec(accuracy_fn, name="loss"))


def test_a_metric_must_be_a_metric_or_a_function() -> None:
    with pytest.raises(TypeError, match=r"Metrics expects torchmetrics metrics or functions \(y_pred, y\) -> tensor; got str\."):
        Metrics("accuracy")


def test_two_metrics_with_one_name_are_refused() -> None:
    with pytest.raises(ValueError, match=r"more than one metric for .*valid/accuracy.*give one of them another name"):
        Metrics(MulticlassAccuracy(num_classes=3), MulticlassAccuracy(num_classes=3, average="macro"))
    Metrics(MetricSpec(accuracy_fn, phases="train"), MetricSpec(accuracy_fn, phases="valid"))  # disjoint: fine


def test_unknown_phase_names_are_refused() -> None:
    with pytest.raises(ValueError, match=r"names unknown phases \['validation'\]; phases are .*'train'.*'valid'.*phases=\"valid\""):
        Metrics(MetricSpec(accuracy_fn, phases="validation"))


def test_a_metric_that_computes_several_numbers_is_an_error_naming_the_fix() -> None:
    learner = classifier(Metrics(MulticlassAccuracy(num_classes=N_CLASSES, average=None)))
    with pytest.raises(ValueError, match=r"train/accuracy computed a tensor of shape \(3,\); .*average=\"macro\""):
        learner.fit(1)


def test_device_accumulation_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tensor accumulation used on accelerators, exercised on CPU tensors."""
    start = metrics_module._Tracker.start

    def on_device(self: Any, loss: Any, y_pred: Any) -> None:
        start(self, loss, y_pred)
        self.on_cpu = False
        self.sums = [torch.zeros((), dtype=torch.float64) for _ in self.sums]

    reference = classifier(Metrics(accuracy_fn))
    reference.fit(2)
    monkeypatch.setattr(metrics_module._Tracker, "start", on_device)
    learner = classifier(Metrics(accuracy_fn))
    learner.fit(2)
    for key, values in reference.cbstate.metrics.epochs.items():
        assert learner.cbstate.metrics.epochs[key] == pytest.approx(values, rel=1e-9)


def test_state_dict_round_trip_before_and_after_joining() -> None:
    learner = make_test_learner(Metrics(), n_batches=2)
    learner.fit(2)
    state = learner.get_callback(Metrics).state_dict()  # type: ignore[union-attr]
    assert state == {"epochs": {k: list(v) for k, v in learner.cbstate.metrics.epochs.items()}}
    fresh = Metrics()
    fresh.load_state_dict(state)
    resumed = make_test_learner(fresh, n_batches=2)
    assert resumed.cbstate.metrics.epochs == state["epochs"]
    resumed.fit(1)
    assert len(resumed.cbstate.metrics.epochs["train/loss"]) == 3
    fresh.load_state_dict(state)  # after joining: replaces the learner's values
    assert resumed.cbstate.metrics.epochs == state["epochs"]


def test_step_values_hold_the_latest_batch_only() -> None:
    learner = classifier(Metrics(accuracy_fn))
    learner.fit(1)
    step = learner.cbstate.metrics.step
    assert sorted(step) == ["train/accuracy_fn", "train/loss", "valid/accuracy_fn", "valid/loss"]
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 and not v.requires_grad for v in step.values())


def test_metric_values_keys_default_empty() -> None:
    assert MetricValues().keys == set()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_no_host_device_sync_per_batch_on_cuda() -> None:
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = torch.nn.Linear(4, N_CLASSES).to(device)
    x, y = classification_data()
    batches = batched(x.to(device), y.to(device))

    def strict(data: list[Any]) -> Any:
        for batch in data:
            torch.cuda.set_sync_debug_mode("error")
            try:
                yield batch
            finally:
                torch.cuda.set_sync_debug_mode("default")

    metrics = Metrics(MulticlassAccuracy(num_classes=N_CLASSES, validate_args=False), accuracy_fn)
    learner = Learner(model, torch.nn.functional.cross_entropy, torch.optim.SGD(model.parameters(), lr=0.5),
                      callbacks=[metrics], default_callbacks=False)
    learner.fit(2, data=(strict(batches), strict(batches)))
    epochs = learner.cbstate.metrics.epochs
    assert epochs["valid/accuracy"] == pytest.approx(epochs["valid/accuracy_fn"])
