"""MLflowLogger, read back with MLflow's client: metrics by step, parameters, artifacts; and a
tracking server that is gone."""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
        learner.fit(1)  # the same MLflow run goes on; the long parameter was warned about once
    assert caplog.text.count("parameter 'notes' is 7000 characters long, over MLflow's limit") == 1
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'demo' / 'mlflow.db'}")
    run = client.get_run(logger.run_id)
    assert run.info.run_name == "demo" and run.info.status == "FINISHED"
    epochs = learner.cbstate.metrics.epochs
    for key in ("train/loss", "valid/loss"):
        history = sorted((m.step, m.value) for m in client.get_metric_history(logger.run_id, key))
        assert history == [(4, epochs[key][0]), (8, epochs[key][1]), (12, epochs[key][2])]
    assert [m.step for m in client.get_metric_history(logger.run_id, "train/loss_step")] == [2, 4, 6, 8, 10, 12]
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
    with pytest.raises(ValueError, match=r'MLflowLogger\(experiment=...\) expects a non-empty name such as "digits"; got \'\''):
        MLflowLogger(experiment="")
    with pytest.raises(ValueError, match=r"MLflowLogger\(flush_timeout=...\) expects seconds > 0, e.g. flush_timeout=60; got 0"):
        MLflowLogger(flush_timeout=0)


# ---- a server that does not answer, and a run that failed --------------------------------------


@pytest.fixture
def silent(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The URI of a server that takes connections and never answers (MLflow waits 5 s per
    request, and does not retry); its connections are closed at the end, so that the worker
    thread, stuck in a request, ends at once."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    taken: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        while not done.is_set():
            try:
                taken.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        done.set()
        thread.join(timeout=5)
        for connection in taken:
            connection.close()
        server.close()
        for worker in [t for t in threading.enumerate() if t.name == "cadence-mlflow"]:
            worker.join(timeout=10)
        assert not [t for t in threading.enumerate() if t.name == "cadence-mlflow"], "the worker thread is still running"


def test_a_server_that_does_not_answer_holds_up_no_training_step(silent: str, caplog: pytest.LogCaptureFixture) -> None:
    logger = MLflowLogger(silent, queue_size=2, flush_timeout=0.5)
    learner = make_test_learner(LogMetrics(logger, every=1), Metrics(), Recorder(), n_batches=8)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="cadence"):
        learner.fit(2)
    took = time.monotonic() - started
    reports = [r.getMessage() for r in caplog.records]
    assert len(reports) == 2, reports
    assert re.match(rf"MLflowLogger\('{silent}'\): MLflow is slower than this run logs: 2 writes wait for it, so the write at step \d", reports[0])
    assert "are dropped, and training does not wait. Log less often (every=...), pass a larger queue_size" in reports[0]
    assert reports[1].startswith(f"MLflowLogger('{silent}') could not flush: TimeoutError: MLflow did not take the queued writes within 0.5 s. Logging to it stops")
    assert took < 3.0  # one flush waited 0.5 s; no step waited for the 5 s request, and FitEnd did not wait again


class FailsOnce(MLflowLogger):
    """Its second batch of metrics raises, as a server that refuses a request does."""

    sent = 0

    def _send(self, client: Any, *args: Any) -> None:
        self.sent += 1
        if self.sent == 2:
            raise RuntimeError("the server refused the batch")
        super()._send(client, *args)


def test_a_run_whose_logging_failed_ends_as_failed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    logger = FailsOnce(uri)
    learner = make_test_learner(LogMetrics(logger, every=2), Metrics(), Recorder(), n_batches=4)
    with caplog.at_level(logging.WARNING, logger="cadence"):
        learner.fit(2)
    assert re.search(r"could not (write|flush): RuntimeError: the server refused the batch", caplog.text)
    assert MlflowClient(tracking_uri=uri).get_run(logger.run_id).info.status == "FAILED"
