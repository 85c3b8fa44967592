"""MLflowLogger, read back with MLflow's client: metrics by step, parameters, artifacts; and a
tracking server that is gone."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest

from cadence import LogConfig, LoggerError, LogMetrics, Metrics, Recorder, RunFolder
from cadence.loggers import MLflowLogger
from cadence.testing import make_test_learner


def test_metrics_params_and_the_config_land_in_the_run_folders_sqlite_store(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from mlflow.tracking import MlflowClient

    logger = MLflowLogger()
    learner = make_test_learner(
        RunFolder("demo", root=tmp_path),
        LogMetrics(logger, every=2),
        LogConfig(logger, hparams={"notes": "x" * 7000}),
        Metrics(),
        Recorder(),
        n_batches=4,
    )
    with caplog.at_level(logging.WARNING):
        learner.fit(2)
    assert "parameter 'notes' is 7000 characters long, over MLflow's limit" in caplog.text
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'demo' / 'mlflow.db'}")
    run = client.get_run(logger.run_id)
    assert run.info.run_name == "demo" and run.info.status == "FINISHED"
    epochs = learner.cbstate.metrics.epochs
    for key in ("train/loss", "valid/loss"):
        history = sorted((m.step, m.value) for m in client.get_metric_history(logger.run_id, key))
        assert history == [(4, epochs[key][0]), (8, epochs[key][1])]
    assert [m.step for m in client.get_metric_history(logger.run_id, "train/loss_step")] == [2, 4, 6, 8]
    params = run.data.params
    assert params["optimizer"] == "SGD" and float(params["lr"]) == 0.1 and len(params["notes"]) < 7000
    config = Path(client.download_artifacts(logger.run_id, "config.md", str(tmp_path)))
    assert config.read_text().startswith("## Model: Linear")
    assert (tmp_path / "demo" / "mlflow-artifacts").is_dir()


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def gone(monkeypatch: pytest.MonkeyPatch) -> str:
    """The URI of an MLflow server that is not there; MLflow gives up at once."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    return f"http://127.0.0.1:{_closed_port()}"


def test_a_server_that_is_gone_is_reported_once_and_training_goes_on(gone: str, caplog: pytest.LogCaptureFixture) -> None:
    learner = make_test_learner(LogMetrics(MLflowLogger(gone), every=1), Metrics(), Recorder(), n_batches=4)
    with caplog.at_level(logging.WARNING, logger="cadence"):
        learner.fit(3)
    assert learner.cbstate.history
    reports = [r for r in caplog.records if "could not" in r.getMessage()]
    assert len(reports) == 1
    assert f"MLflowLogger('{gone}') could not" in reports[0].getMessage()
    assert "training goes on" in reports[0].getMessage() and "strict=True" in reports[0].getMessage()


def test_strict_makes_it_an_error(gone: str) -> None:
    learner = make_test_learner(LogMetrics(MLflowLogger(gone, strict=True), every=1), Metrics(), Recorder(), n_batches=4)
    with pytest.raises(LoggerError, match=r"MLflowLogger\('http://127.0.0.1:\d+'\) could not .*strict=True"):
        learner.fit(1)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(TypeError, match=r"MLflowLogger\(tracking_uri=...\) expects a URI string"):
        MLflowLogger(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"MLflowLogger\(queue_size=...\) expects an int >= 1"):
        MLflowLogger(queue_size=0)
