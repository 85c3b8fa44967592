"""CSVLogger, read back with the csv module: rows, steps, values, appending and replacing."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import pytest

from cadence import LogMetrics, Metrics, Recorder
from cadence.loggers import CSVLogger, Hyperparameters, Scalar, Text
from cadence.testing import make_test_learner


def rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.read_text().splitlines()))


def test_every_value_is_a_row_at_its_training_step(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    learner = make_test_learner(LogMetrics(CSVLogger(path), every=2), Metrics(), Recorder(), n_batches=4)
    learner.fit(3)
    found = rows(path)
    assert path.read_text().splitlines()[0] == "step,epoch,phase,name,value"
    steps = [(int(r["step"]), int(r["epoch"])) for r in found if r["name"] == "loss_step"]
    assert steps == [(2, 1), (4, 1), (6, 2), (8, 2), (10, 3), (12, 3)]
    epochs = learner.cbstate.metrics.epochs
    for phase in ("train", "valid"):
        logged = [(int(r["step"]), float(r["value"])) for r in found if r["phase"] == phase and r["name"] == "loss"]
        # validation values sit at the training step they follow: one axis for every phase
        assert logged == [(4, epochs[f"{phase}/loss"][0]), (8, epochs[f"{phase}/loss"][1]), (12, epochs[f"{phase}/loss"][2])]


def test_a_second_fit_appends_and_a_new_metric_adds_rows_not_columns(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    logger = CSVLogger(path)
    learner = make_test_learner(LogMetrics(logger, every=4), Metrics(), Recorder(), n_batches=4)
    learner.fit(1)
    first = path.read_text()
    learner.fit(2)
    assert path.read_text().startswith(first)
    assert path.read_text().count("step,epoch") == 1
    assert [int(r["step"]) for r in rows(path) if r["name"] == "loss" and r["phase"] == "train"] == [4, 8, 12]
    logger.attach("owner", None)
    logger.write([Scalar("accuracy", 0.9), Text("note", "skipped"), Hyperparameters({"lr": 0.1})], step=9, epoch=3, phase="valid")
    logger.detach("owner")
    assert rows(path)[-1] == {"step": "9", "epoch": "3", "phase": "valid", "name": "accuracy", "value": "0.9"}


def test_direct_writes_into_an_earlier_file_replace_it_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Within a fit this is refused (tests/loggers/test_backend.py); a write outside any fit replaces.
    path = tmp_path / "metrics.csv"
    path.write_text("step,epoch,phase,name,value\n99,9,train,loss,1.0\n")
    logger = CSVLogger(path)
    with caplog.at_level(logging.WARNING):
        logger.write([Scalar("loss", 0.5)], step=1, epoch=1, phase="train")
        logger.close()
    assert f"CSVLogger: {path} holds an earlier run's values; this fresh log replaces them." in caplog.text
    assert [r["step"] for r in rows(path)] == ["1"]


def test_a_path_that_is_not_a_path_is_refused() -> None:
    with pytest.raises(TypeError, match=r'CSVLogger\(path=...\) expects a file path such as "metrics.csv"'):
        CSVLogger(3)  # type: ignore[arg-type]
