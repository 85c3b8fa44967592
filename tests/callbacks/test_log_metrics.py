"""LogMetrics logs what each epoch produced, whatever Metrics' history held before the fit."""

from __future__ import annotations

import csv
from pathlib import Path

from cadence import LogMetrics, Metrics, Recorder
from cadence.loggers import CSVLogger
from cadence.testing import make_test_learner


def epoch_rows(path: Path) -> list[tuple[str, str]]:
    return [(r["step"], r["phase"]) for r in csv.DictReader(path.read_text().splitlines()) if r["name"] == "loss"]


def test_the_same_logmetrics_in_a_second_learner_logs_its_epochs(tmp_path: Path) -> None:
    logger = LogMetrics(CSVLogger(tmp_path / "first.csv"), every=100)
    make_test_learner(logger, Metrics(), Recorder(), n_batches=2).fit(3)
    logger.backends = (CSVLogger(tmp_path / "second.csv"),)
    make_test_learner(logger, Metrics(), Recorder(), n_batches=2).fit(2)
    assert epoch_rows(tmp_path / "second.csv") == [("2", "train"), ("2", "valid"), ("4", "train"), ("4", "valid")]


def test_a_metrics_history_that_starts_afresh_is_logged_from_its_first_epoch(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    learner = make_test_learner(LogMetrics(CSVLogger(path), every=100), Metrics(), Recorder(), n_batches=2)
    learner.fit(2)
    for history in learner.cbstate.metrics.epochs.values():
        history.clear()  # as a Metrics that starts each fit's history afresh does
    learner.fit(3)
    assert epoch_rows(path) == [(str(step), phase) for step in (2, 4, 6, 8, 10) for phase in ("train", "valid")]
