"""A SIGKILLed, logged run resumed with resume="latest" leaves every backend as the
uninterrupted run does: each step once, in order, with the same values."""

from __future__ import annotations

import csv
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

SCRIPT = Path(__file__).resolve().parent / "resume_script.py"
Series = dict[str, list[tuple[int, float]]]


def start(root: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(SCRIPT), str(root), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen[str]) -> int:
    try:
        _, err = process.communicate(timeout=240)
    finally:
        process.kill()
    if process.returncode not in (0, -9):
        pytest.fail(f"{' '.join(map(str, process.args))} failed ({process.returncode}):\n{err[-3000:]}")  # type: ignore[arg-type]
    return process.returncode


def csv_series(folder: Path) -> tuple[list[tuple[str, ...]], Series]:
    rows = [tuple(r) for r in csv.reader((folder / "metrics.csv").read_text().splitlines())][1:]
    series: Series = defaultdict(list)
    for step, _, phase, name, value in rows:
        series[f"{phase}/{name}"].append((int(step), float(value)))
    return rows, series


def tensorboard_series(folder: Path) -> Series:
    series: Series = {}
    for phase in ("train", "valid"):
        events = EventAccumulator(str(folder / "tensorboard" / phase), size_guidance={"scalars": 0}).Reload()
        for tag in events.Tags()["scalars"]:
            series[f"{phase}/{tag}"] = [(e.step, e.value) for e in events.Scalars(tag)]
    return series


def mlflow_series(folder: Path) -> Series:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("cadence").experiment_id])
    return {
        key: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)) for key in run.data.metrics
    }


def test_a_killed_run_resumed_logs_each_step_once_with_the_same_values(tmp_path: Path) -> None:
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    # Step 8 is killed after the checkpoint at step 6, the first epoch's last batch: the killed
    # run logged step 7 and the first epoch's values after that checkpoint.
    uninterrupted, first = start(whole), start(killed, "--kill-at", "8")
    assert finish(first) == -9
    assert finish(start(killed, "--resume")) == 0
    assert finish(uninterrupted) == 0
    expected_rows, expected = csv_series(whole / "run")
    rows, got = csv_series(killed / "run")
    assert rows == expected_rows  # no duplicate row, nothing missing, same values
    for name, read in (("TensorBoard", tensorboard_series), ("MLflow", mlflow_series)):
        series, reference = read(killed / "run"), read(whole / "run")
        assert series.keys() == reference.keys() and "valid/loss" in series, name
        for key, points in series.items():
            steps = [s for s, _ in points]
            assert steps == sorted(set(steps)), f"{name} {key}: steps {steps}"
            assert points == reference[key], f"{name} {key}"
    assert [s for s, _ in got["valid/loss"]] == [6, 12, 18]
