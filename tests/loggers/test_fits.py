"""The logger callbacks across fits, read back with each backend's own library: a second fit of
a learner appends on its step axis, an instance reused in another learner starts another run,
and two backend instances on one log are refused."""

from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cadence import (
    LearningCurves,
    LogConfig,
    LogHistograms,
    LogHyperparams,
    LogMetrics,
    Metrics,
    Recorder,
    RunFolder,
    Scheduler,
)
from cadence.errors import LoggerError
from cadence.loggers import CSVLogger, MLflowLogger, TensorBoardLogger
from cadence.loggers.backend import Backend
from cadence.phases import TrainingPhase
from cadence.schedules import linear
from cadence.testing import make_test_learner


def accumulate(folder: Path) -> EventAccumulator:
    return EventAccumulator(str(folder), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0}).Reload()


def csv_rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.read_text().splitlines()))


def linear_lr(n_steps: int) -> list[float]:
    """``linear(0.1, 0.0)`` over a fit of ``n_steps``: from 0.1 at its first step to 0.0 at its last."""
    return [0.1 * (1 - i / (n_steps - 1)) for i in range(n_steps)]


def every_logger(root: Path) -> tuple[list[Any], dict[str, Backend]]:
    backends: dict[str, Backend] = {"csv": CSVLogger(), "tensorboard": TensorBoardLogger(), "mlflow": MLflowLogger()}
    every = list(backends.values())
    callbacks = [
        RunFolder("demo", root=root),
        LogMetrics(*every, every=2),
        LogHyperparams(*every),
        LogHistograms(backends["tensorboard"], every=4),
        LogConfig(*every, hparams={"batch_size": 8}),
        LearningCurves(),
        Scheduler(lr=linear(0.1, 0.0)),
        Metrics(),
        Recorder(),
    ]
    return callbacks, backends


def test_a_second_fit_warns_nothing_and_appends_on_the_step_axis_in_every_backend(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from mlflow.tracking import MlflowClient

    callbacks, backends = every_logger(tmp_path)
    learner = make_test_learner(*callbacks, n_batches=4)
    with caplog.at_level(logging.WARNING):
        learner.fit(2)  # steps 1..8
        learner.fit(1)  # steps 9..12: the schedule again, over this fit's 4 steps
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    epochs = learner.cbstate.metrics.epochs
    lr = linear_lr(8) + linear_lr(4)
    folder = tmp_path / "demo"

    found = csv_rows(folder / "metrics.csv")
    assert (folder / "metrics.csv").read_text().count("step,epoch") == 1
    for phase in ("train", "valid"):
        assert [(int(r["step"]), int(r["epoch"]), float(r["value"])) for r in found if (r["phase"], r["name"]) == (phase, "loss")] == [
            (4, 1, epochs[f"{phase}/loss"][0]), (8, 2, epochs[f"{phase}/loss"][1]), (12, 3, epochs[f"{phase}/loss"][2])
        ]
    assert [int(r["step"]) for r in found if r["name"] == "loss_step"] == [2, 4, 6, 8, 10, 12]
    lr_rows = [(int(r["step"]), float(r["value"])) for r in found if r["name"] == "lr/group0"]
    assert lr_rows == [(step, pytest.approx(value)) for step, value in enumerate(lr, start=1)]

    tensorboard = folder / "tensorboard"
    train = accumulate(tensorboard / "train")
    assert [(e.step, e.value) for e in train.Scalars("loss")] == [
        (4, pytest.approx(epochs["train/loss"][0])), (8, pytest.approx(epochs["train/loss"][1])), (12, pytest.approx(epochs["train/loss"][2]))
    ]
    assert [(e.step, e.value) for e in train.Scalars("lr/group0")] == [(s, pytest.approx(v)) for s, v in enumerate(lr, start=1)]
    assert [e.step for e in accumulate(tensorboard / "valid").Scalars("loss")] == [4, 8, 12]
    whole = accumulate(tensorboard)
    assert [e.step for e in whole.Histograms("weights/weight")] == [4, 8, 12]
    assert [e.step for e in whole.Tensors("config")] == [0]  # the run's configuration, once
    assert [e.step for e in whole.Tensors("_hparams_/session_start_info")] == [0]

    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "cadence"]
    (run,) = client.search_runs([experiment.experiment_id])  # one MLflow run for both fits
    assert run.info.run_id == backends["mlflow"].run_id and run.info.status == "FINISHED"  # type: ignore[attr-defined]
    history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "valid/loss"))
    assert history == [(4, epochs["valid/loss"][0]), (8, epochs["valid/loss"][1]), (12, epochs["valid/loss"][2])]
    assert sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train/lr/group0")) == [
        (s, pytest.approx(v)) for s, v in enumerate(lr, start=1)
    ]
    assert run.data.params["n_epochs"] == "2" and run.data.params["batch_size"] == "8"

    curves = learner.get_callback(LearningCurves)
    assert curves is not None
    state = curves.state_dict()  # the lr curve goes on along the learner's steps
    assert state["steps"] == list(range(1, 13)) and state["lr"]["lr/group0"] == pytest.approx(lr)
    assert sorted(p.name for p in (folder / "plots").iterdir()) == ["loss.png", "lr.png"]


def test_reused_in_another_learner_they_start_another_run(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from mlflow.tracking import MlflowClient

    callbacks, backends = every_logger(tmp_path)
    make_test_learner(*callbacks, n_batches=4).fit(1)
    with pytest.raises(LoggerError, match=r"CSVLogger\('.*metrics.csv'\) holds rows of an earlier run, and this fit starts a new run"):
        make_test_learner(*callbacks, n_batches=2).fit(1)  # a log belongs to one run, as a checkpoint folder does
    folder = tmp_path / "demo"
    for name in ("metrics.csv", "tensorboard"):  # aside, as the message says (MLflow keeps its runs apart)
        shutil.move(folder / name, tmp_path / name)
    with caplog.at_level(logging.WARNING):
        learner = make_test_learner(*callbacks, n_batches=2)
        learner.fit(1)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert [(int(r["step"]), r["name"]) for r in csv_rows(folder / "metrics.csv") if r["name"] in ("loss_step", "lr/group0")] == [
        (1, "lr/group0"), (2, "loss_step"), (2, "lr/group0")
    ]
    assert [e.step for e in accumulate(folder / "tensorboard" / "train").Scalars("loss")] == [2]
    assert [e.step for e in accumulate(folder / "tensorboard").Tensors("config")] == [0]  # this run's configuration
    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "cadence"]
    runs = {r.info.run_id: r for r in client.search_runs([experiment.experiment_id])}
    assert len(runs) == 2  # another MLflow run in the same store
    run = runs[backends["mlflow"].run_id]  # type: ignore[attr-defined]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [2]
    assert run.data.params["n_epochs"] == "1"
    curves = learner.get_callback(LearningCurves)
    assert curves is not None and curves.state_dict()["steps"] == [1, 2]
    assert curves.state_dict()["lr"]["lr/group0"] == pytest.approx(linear_lr(2))


def _two_on_one_log(kind: str, where: Path) -> tuple[Backend, Backend, str]:
    if kind == "csv":
        return CSVLogger(where / "m.csv"), CSVLogger(where / "m.csv"), str(where / "m.csv")
    if kind == "tensorboard":
        return TensorBoardLogger(where / "tb"), TensorBoardLogger(where / "tb"), str(where / "tb")
    if kind == "mlflow":
        uri = f"sqlite:///{where / 'm.db'}"
        return MLflowLogger(uri), MLflowLogger(uri), uri
    return CSVLogger(), CSVLogger(where / "demo" / "metrics.csv"), str(where / "demo" / "metrics.csv")


@pytest.mark.parametrize("kind", ["csv", "tensorboard", "mlflow", "csv in the run folder"])
def test_two_backend_instances_on_one_log_are_refused_before_anything_is_written(tmp_path: Path, kind: str) -> None:
    first, second, where = _two_on_one_log(kind, tmp_path)
    name = type(first).__name__
    learner = make_test_learner(
        RunFolder("demo", root=tmp_path), LogMetrics(first, every=2), LogHyperparams(second), Metrics(), Recorder(), n_batches=2
    )
    made = f"{name}()" if kind == "csv in the run folder" else f"{name}({where!r})"
    message = (
        f"LogMetrics and LogHyperparams write to one log, '{where}', through two {name} instances: "
        f"{first.shared_harm}. A log is written through one {name}; make one and pass that instance "
        f"to each: logger = {made}; LogMetrics(logger, ...), LogHyperparams(logger, ...)."
    )
    with pytest.raises(LoggerError) as raised:
        learner.fit(1)
    assert str(raised.value) == message
    assert learner.cbstate.history[TrainingPhase()].steps == 0  # refused at FitBegin, before any batch
    assert not (tmp_path / "m.csv").exists() and not (tmp_path / "tb").exists() and not (tmp_path / "m.db").exists()
    assert not (tmp_path / "demo" / "metrics.csv").exists()


def test_one_callback_with_two_instances_on_one_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    learner = make_test_learner(LogMetrics(CSVLogger(path), CSVLogger(path)), Metrics(), Recorder())
    with pytest.raises(LoggerError, match=r"LogMetrics writes to one log, '.*m\.csv', through two CSVLogger instances: .* pass it once: LogMetrics\(CSVLogger\('.*m\.csv'\)\)\."):
        learner.fit(1)
    assert not path.exists()


def test_one_instance_shared_by_every_callback_writes_one_header_and_keeps_every_row(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    logger = CSVLogger(path)
    learner = make_test_learner(LogMetrics(logger, every=2), LogHyperparams(logger), Metrics(), Recorder(), n_batches=2)
    learner.fit(1)
    learner.fit(1)
    assert path.read_text().count("step,epoch") == 1
    assert [int(r["step"]) for r in csv_rows(path) if r["name"] == "lr/group0"] == [1, 2, 3, 4]
    assert [int(r["step"]) for r in csv_rows(path) if r["name"] == "loss_step"] == [2, 4]
