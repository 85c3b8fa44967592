"""Metrics with torchmetrics and functions: names, per-phase selection, exact epoch values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score
from torchmetrics.regression import MeanAbsoluteError

from cadence import Callback, Learner, Metrics, on, READ
from cadence.callbacks import metric_state
from cadence.callbacks.checkpointer import Checkpointer
from cadence.callbacks.metrics import MetricSpec, MetricValues
from cadence.checkpointing.files import CheckpointError, check_plain, list_checkpoints, load_checkpoint, write_checkpoint
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


def unsupervised_loss(y_pred: torch.Tensor, y: None) -> torch.Tensor:
    return y_pred.pow(2).mean()


def test_data_without_targets_weighs_batches_by_the_predictions() -> None:
    x, _ = classification_data()
    batches = [(x[i : i + 10], None) for i in range(0, len(x), 10)]  # the last batch has 7
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    learner = Learner(
        model, unsupervised_loss, torch.optim.SGD(model.parameters(), lr=0.0),
        data=(batches, batches), callbacks=[Metrics()], default_callbacks=False,
    )
    learner.fit(1)
    with torch.no_grad():
        exact = float(unsupervised_loss(model(x), None))
    assert learner.cbstate.metrics.last("valid/loss") == pytest.approx(exact, rel=1e-6)


def detection_loss(y_pred: torch.Tensor, y: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    labels, boxes = y
    return torch.nn.functional.cross_entropy(y_pred, labels) + 0.0 * boxes.sum()


def label_accuracy(y_pred: torch.Tensor, y: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return accuracy_fn(y_pred, y[0])


def test_tuple_targets_weigh_batches_by_their_first_tensor() -> None:
    x, y = classification_data()
    boxes = torch.zeros(len(x), 2, 4)
    batches = [(x[i : i + 10], (y[i : i + 10], boxes[i : i + 10])) for i in range(0, len(x), 10)]
    torch.manual_seed(0)
    model = torch.nn.Linear(4, N_CLASSES)
    learner = Learner(
        model, detection_loss, torch.optim.SGD(model.parameters(), lr=0.0),
        data=(batches, batches), callbacks=[Metrics(label_accuracy)], default_callbacks=False,
    )
    learner.fit(1)
    with torch.no_grad():
        y_pred = model(x)
    values = learner.cbstate.metrics
    exact_loss = float(torch.nn.functional.cross_entropy(y_pred, y))
    assert len(batches[-1][1][0]) == 7  # the short last batch weighs less
    assert values.last("valid/loss") == pytest.approx(exact_loss, rel=1e-6)
    assert values.last("train/loss") == pytest.approx(exact_loss, rel=1e-6)
    assert values.last("valid/label_accuracy") == pytest.approx(float(accuracy_fn(y_pred, y)), rel=1e-6)


@pytest.mark.parametrize(
    ("y", "y_pred", "x", "size"),
    [
        ((torch.zeros(5), torch.zeros(2, 4)), None, None, 5),
        ([None, {"labels": torch.zeros(6)}], None, None, 6),
        ({"mask": torch.zeros(())}, torch.zeros(3, 2), None, 3),  # a scalar has no batch dimension
        ([{"boxes": torch.zeros(9, 4)}, {"boxes": torch.zeros(1, 4)}], None, None, 2),  # per-sample records
        (None, {"logits": torch.zeros(4, 2)}, None, 4),
        (None, None, [torch.zeros(8, 1)], 8),
        (["a", "b"], None, None, 1),  # no tensor anywhere: counts as 1
    ],
)
def test_the_batch_size_is_the_first_tensor_dimension_found(y: Any, y_pred: Any, x: Any, size: int) -> None:
    batch = type("Batch", (), {"x": x, "y": y, "y_pred": y_pred})()
    assert metric_state.batch_size(y, batch) == size


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


@pytest.mark.parametrize("phases", [["valid", 3], 3, [Metrics], ValidationPhase()])
def test_phases_of_the_wrong_type_are_refused(phases: Any) -> None:
    with pytest.raises(
        TypeError,
        match=r"MetricSpec\('accuracy_fn', phases=\.\.\.\) takes phase names or Phase classes, or a list of "
        r"them; got .*\. Write e\.g\. phases=\"valid\" or phases=\[\"train\", ValidationPhase\]\.",
    ):
        Metrics(MetricSpec(accuracy_fn, phases=phases))


def test_a_metric_that_computes_several_numbers_is_an_error_naming_the_fix() -> None:
    learner = classifier(Metrics(MulticlassAccuracy(num_classes=N_CLASSES, average=None)))
    with pytest.raises(ValueError, match=r"train/accuracy computed a tensor of shape \(3,\); .*average=\"macro\""):
        learner.fit(1)


def test_device_accumulation_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tensor accumulation used on accelerators, exercised on CPU tensors."""
    start = metric_state._Tracker.start

    def on_device(self: Any, loss: Any, y_pred: Any) -> None:
        start(self, loss, y_pred)
        self.on_cpu = False
        self.sums = [torch.zeros((), dtype=torch.float64) for _ in self.sums]

    reference = classifier(Metrics(accuracy_fn))
    reference.fit(2)
    monkeypatch.setattr(metric_state._Tracker, "start", on_device)
    learner = classifier(Metrics(accuracy_fn))
    learner.fit(2)
    for key, values in reference.cbstate.metrics.epochs.items():
        assert learner.cbstate.metrics.epochs[key] == pytest.approx(values, rel=1e-9)


def test_state_dict_round_trip_before_and_after_joining() -> None:
    learner = make_test_learner(Metrics(), n_batches=2)
    learner.fit(2)
    state = learner.get_callback(Metrics).state_dict()  # type: ignore[union-attr]
    assert state == {"epochs": {k: list(v) for k, v in learner.cbstate.metrics.epochs.items()}, "running": {}}
    fresh = Metrics()
    fresh.load_state_dict(state)
    resumed = make_test_learner(fresh, n_batches=2)
    assert resumed.cbstate.metrics.epochs == state["epochs"]
    resumed.fit(1)
    assert len(resumed.cbstate.metrics.epochs["train/loss"]) == 3
    fresh.load_state_dict(state)  # after joining: replaces the learner's values
    assert resumed.cbstate.metrics.epochs == state["epochs"]
    fresh.load_state_dict({"epochs": state["epochs"]})  # a checkpoint from before "running"
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


# ---- the running state of an epoch under way, for mid-epoch checkpoints ------------------------


class MeanOfList(Metric):
    """A torchmetrics metric with a list state ("cat"), as SpearmanCorrCoef has."""

    errors: list[torch.Tensor]

    def __init__(self) -> None:
        super().__init__()
        self.add_state("errors", default=[], dist_reduce_fx="cat")

    def update(self, y_pred: torch.Tensor, y: torch.Tensor) -> None:
        self.errors.append((y_pred - y).abs().flatten())

    def compute(self) -> torch.Tensor:
        return torch.cat(self.errors).mean()


class SumOfErrors:
    """A stateful metric that is not a torchmetrics Metric, with its own state_dict()."""

    def __init__(self) -> None:
        self.total = torch.zeros(())

    def update(self, y_pred: torch.Tensor, y: torch.Tensor) -> None:
        self.total = self.total + (y_pred - y).abs().sum()

    def compute(self) -> torch.Tensor:
        return self.total

    def reset(self) -> None:
        self.total = torch.zeros(())

    def state_dict(self) -> dict[str, Any]:
        return {"total": self.total.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.total = state["total"].clone()


def mean_error(y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (y_pred - y).abs().mean()


def all_metrics() -> Metrics:
    return Metrics(MeanAbsoluteError(), MetricSpec(MeanOfList(), phases="train"), SumOfErrors(), mean_error)


def resume_from_every_checkpoint(folder: Path, **kwargs: Any) -> None:
    """Fit 3 epochs of 7 batches with a checkpoint every 3 steps, then resume from each one:
    mid-epoch (after 1 to 6 batches, and after all 7) and at epoch boundaries."""
    reference = make_test_learner(all_metrics(), Checkpointer(folder, every_steps=3, keep_last=100), n_batches=7, **kwargs)
    reference.fit(3)
    expected = reference.cbstate.metrics.epochs
    checkpoints = list_checkpoints(folder)
    batches = {load_checkpoint(p).meta["position"]["batch"] for p in checkpoints}
    assert batches == {0, 1, 2, 3, 4, 5, 6, 7}
    for path in checkpoints:
        resumed = make_test_learner(all_metrics(), Checkpointer(folder / "again" / path.stem, every_steps=3), n_batches=7, **kwargs)
        resumed.fit(3, resume=path)
        assert resumed.cbstate.metrics.epochs == expected, path.name  # bit for bit


def test_a_resumed_epoch_ends_with_the_values_of_the_uninterrupted_run(tmp_path: Path) -> None:
    resume_from_every_checkpoint(tmp_path)


def test_a_resumed_epoch_ends_with_the_same_values_on_the_device_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The accelerator path (tensor sums, saved as CPU tensors), exercised on CPU tensors."""
    start = metric_state._Tracker.start

    def on_device(self: Any, loss: Any, y_pred: Any) -> None:
        start(self, loss, y_pred)  # puts a restored running state back as floats
        self.on_cpu = False
        self.sums = [torch.as_tensor(s, dtype=torch.float64) for s in self.sums]

    monkeypatch.setattr(metric_state._Tracker, "start", on_device)
    resume_from_every_checkpoint(tmp_path)
    saved = load_checkpoint(next(p for p in list_checkpoints(tmp_path) if p.name.endswith("epoch1-batch2.pt")))
    sums = saved.state["callbacks"]["Metrics"]["running"]["train"]["sums"]
    assert all(isinstance(s, torch.Tensor) and s.dtype == torch.float64 for s in sums.values())


class Capture(Callback):
    """Keeps Metrics.state_dict() after the training batch ``at`` of the first epoch."""

    def __init__(self, metrics: Metrics, at: int) -> None:
        self.metrics, self.at, self.seen = metrics, at, 0
        self.state: dict[str, Any] = {}

    @on(BatchEnd, phase=TrainingPhase)
    def capture(self, event: Any, phase: Any, learner: Any) -> None:
        self.seen += 1
        if self.seen == self.at:
            self.state = self.metrics.state_dict()


def test_state_dict_mid_epoch_holds_copies_of_the_running_state() -> None:
    metrics = all_metrics()
    capture = Capture(metrics, at=2)
    learner = make_test_learner(metrics, capture, n_batches=3)
    learner.fit(1)
    running = capture.state["running"]
    assert list(running) == ["train"]  # no validation epoch was under way
    train = running["train"]
    assert train["count"] == 16 and train["devices"] == ["cpu", "cpu"]
    assert sorted(train["sums"]) == ["train/loss", "train/mean_error"]
    assert all(type(s) is float for s in train["sums"].values())  # CPU: Python floats
    assert sorted(train["metrics"]) == ["train/mean_absolute_error", "train/mean_of_list", "train/sum_of_errors"]
    mae = train["metrics"]["train/mean_absolute_error"]
    assert mae["update_count"] == 2 and sorted(mae["states"]) == ["sum_abs_error", "total"]
    assert mae["states"]["total"].item() == 16  # a copy: the third batch did not change it
    assert len(train["metrics"]["train/mean_of_list"]["states"]["errors"]) == 2
    assert "total" in train["metrics"]["train/sum_of_errors"]["state_dict"]
    check_plain(capture.state, "Metrics.state_dict()")
    assert metrics.state_dict()["running"] == {}  # every epoch ended


def test_a_running_state_restored_outside_its_epoch_is_dropped() -> None:
    metrics = all_metrics()
    capture = Capture(metrics, at=2)
    make_test_learner(metrics, capture, n_batches=3).fit(1)
    fresh, reference = all_metrics(), all_metrics()
    fresh.load_state_dict({"epochs": {}, "running": capture.state["running"]})  # as at an epoch boundary
    learner = make_test_learner(fresh, n_batches=3)
    learner.fit(1)
    expected = make_test_learner(reference, n_batches=3)
    expected.fit(1)
    assert learner.cbstate.metrics.epochs == expected.cbstate.metrics.epochs


def test_a_state_saved_after_the_last_batch_on_a_device_this_machine_lacks_is_restored_on_the_cpu(tmp_path: Path) -> None:
    reference = make_test_learner(all_metrics(), Checkpointer(tmp_path, every_steps=3, keep_last=100), n_batches=3)
    reference.fit(2)
    checkpoint = load_checkpoint(next(p for p in list_checkpoints(tmp_path) if p.name.endswith("epoch0-batch3.pt")))
    checkpoint.state["callbacks"]["Metrics"]["running"]["train"]["devices"] = ["cuda:99", "cuda:99"]
    meta = {k: v for k, v in checkpoint.meta.items() if k not in ("format", "version", "bytes", "sha256")}
    path = write_checkpoint(tmp_path / "edited", "checkpoint-000001-epoch0-batch3", checkpoint.state, meta)
    resumed = make_test_learner(all_metrics(), Checkpointer(tmp_path / "again"), n_batches=3)
    resumed.fit(2, resume=path)  # no batch comes before EpochEnd: the state is put back there
    assert resumed.cbstate.metrics.epochs == reference.cbstate.metrics.epochs


def test_a_running_state_of_other_metrics_is_an_error(tmp_path: Path) -> None:
    make_test_learner(all_metrics(), Checkpointer(tmp_path, every_steps=2), n_batches=3).fit(1)
    path = next(p for p in list_checkpoints(tmp_path) if p.name.endswith("batch2.pt"))
    learner = make_test_learner(Metrics(mean_error), Checkpointer(tmp_path / "again"), n_batches=3)
    fix = r"this Metrics tracks \['train/loss', 'train/mean_error'\]\. Resume with the metrics the checkpoint was taken with\."
    # Refused before anything runs, as the state is tried on a copy of Metrics first.
    with pytest.raises(CheckpointError, match=rf"^{path}: Metrics.load_state_dict refuses the state the checkpoint holds for it \(ValueError: Metrics cannot restore the running state of the train epoch under way: the checkpoint holds \['train/loss', 'train/mean_absolute_error', .*\]; " + fix + r"\), tried before anything was restored\."):
        learner.fit(1, resume=path)


def test_a_stateful_metric_without_state_dict_cannot_be_saved_mid_epoch(tmp_path: Path) -> None:
    class Opaque:
        def update(self, y_pred: torch.Tensor, y: torch.Tensor) -> None: ...

        def compute(self) -> torch.Tensor:
            return torch.zeros(())

        def reset(self) -> None: ...

    learner = make_test_learner(Metrics(MetricSpec(Opaque(), name="opaque")), Checkpointer(tmp_path, every_steps=1))
    with pytest.raises(CheckpointError, match=r"Metrics cannot save the running state of train/opaque for a checkpoint in the middle of an epoch: Opaque is not a torchmetrics Metric and has no state_dict\(\)\. Give it state_dict\(\) and load_state_dict\(\) methods .*Checkpointer\(folder, every_steps=None\)"):
        learner.fit(1)
    make_test_learner(Metrics(MetricSpec(Opaque(), name="opaque")), Checkpointer(tmp_path / "ends")).fit(1)  # epoch ends: fine


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_resumed_epoch_on_cuda_ends_with_the_values_of_the_uninterrupted_run(tmp_path: Path) -> None:
    device = torch.device("cuda")
    x, y = classification_data()
    batches = batched(x.to(device), y.to(device))

    def build(folder: Path) -> Learner:
        torch.manual_seed(0)
        model = torch.nn.Linear(4, N_CLASSES).to(device)
        metrics = Metrics(MulticlassAccuracy(num_classes=N_CLASSES), MulticlassF1Score(num_classes=N_CLASSES), accuracy_fn)
        return Learner(model, torch.nn.functional.cross_entropy, torch.optim.SGD(model.parameters(), lr=0.5),
                       data=(batches, batches), callbacks=[metrics, Checkpointer(folder, every_steps=2, keep_last=100)],
                       default_callbacks=False)

    reference = build(tmp_path / "run")
    reference.fit(2)
    expected = reference.cbstate.metrics.epochs
    checkpoints = list_checkpoints(tmp_path / "run")
    running = load_checkpoint(checkpoints[0]).state["callbacks"]["Metrics"]["running"]["train"]
    assert all(s.device.type == "cpu" for s in running["sums"].values())
    for path in checkpoints:
        resumed = build(tmp_path / "again" / path.stem)  # a folder belongs to one run
        resumed.fit(2, resume=path)
        assert resumed.cbstate.metrics.epochs == expected, path.name
