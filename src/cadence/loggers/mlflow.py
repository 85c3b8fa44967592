"""MLflowLogger: metrics, parameters and artifacts sent to MLflow, off the training thread.

MLflow's calls are slow (a database write, or a request to a server), so a worker thread makes
them: a write puts one batch on a bounded queue and returns at once; a write that finds the
queue full is dropped (one warning per fit), so a training step never waits for MLflow and
memory stays bounded. What waits is a flush: at every epoch end with something new, before
each checkpoint and at ``FitEnd``, at most ``flush_timeout`` seconds each time; one that runs
out of time is a failure, and after a failure nothing waits for MLflow again. Metrics go in
batches (``log_batch``), never one call per value.

MLflow retries a request to a server that does not answer on its own, for minutes by default;
its environment variables ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` (default 7) and
``MLFLOW_HTTP_REQUEST_TIMEOUT`` (seconds per request, default 120) bound that. The worker
thread cannot be interrupted inside such a call: it ends as soon as MLflow gives up.

The default store is a SQLite database in the run folder, ``sqlite:///runs/<name>/mlflow.db``,
with the artifacts beside it in ``mlflow-artifacts/``: recent MLflow refuses its plain file
store unless an environment variable is set, and a server is not always there.

Resuming: a checkpoint records the MLflow run's id; the resumed fit continues that run, and
skips the values of the steps a killed run had already sent after its checkpoint (MLflow
cannot delete metric values), so no step appears twice.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cadence.loggers.backend import Backend
from cadence.loggers.extras import require
from cadence.loggers.run import Run
from cadence.loggers.values import Figure, Histogram, Hyperparameters, Image, Loggable, Scalar, Text
from cadence.loggers.worker import Call, Send, Worker

__all__ = ["MLflowLogger"]

log = logging.getLogger(__name__)

_METRICS_PER_BATCH, _PARAMS_PER_BATCH = 1000, 100  # log_batch's limits per call
_LAST_WAIT = 5.0  # at most, to mark a run FAILED after a call raised (MLflow answers then)


class MLflowLogger(Backend):
    """Logs scalars as MLflow metrics (``"train/loss"``), hyperparameters as parameters, text,
    images and figures as artifacts; histograms are not sent (MLflow has no such view).

    Open what it wrote with ``mlflow ui --backend-store-uri sqlite:///runs/<name>/mlflow.db``
    (the ``mlflow`` package; ``mlflow-skinny`` has no UI), or read it with ``MlflowClient``.

    Args:
        tracking_uri: Any MLflow tracking URI (``http://host:5000``, ``sqlite:///path.db``,
            ``databricks``); None for ``mlflow.db`` in the run folder.
        experiment: The MLflow experiment's name, created when missing.
        run_name: The MLflow run's name; None for the run folder's name.
        queue_size: Writes waiting for the worker thread; a write that finds them all taken
            is dropped, with one warning per fit.
        flush_timeout: Seconds a flush waits for MLflow before it counts as a failure.
        strict: Raise ``LoggerError`` on a failure instead of warning once.

    Parameters longer than MLflow's limit are shortened, with one warning per parameter. A
    run whose logging failed ends as ``FAILED`` when MLflow still answers (else it stays
    ``RUNNING``).

    Raises:
        MissingExtraError: ``mlflow-skinny`` (or, for SQLite, SQLAlchemy and Alembic) is not
            installed.
    """

    default_name = "mlflow.db"
    shared_harm = "each would make an MLflow run of its own, of one name, with part of the values"

    def __init__(
        self,
        tracking_uri: str | None = None,
        *,
        experiment: str = "cadence",
        run_name: str | None = None,
        queue_size: int = 64,
        flush_timeout: float = 60.0,
        strict: bool = False,
    ) -> None:
        if tracking_uri is not None and not isinstance(tracking_uri, str):
            raise TypeError(
                f'MLflowLogger(tracking_uri=...) expects a URI string such as "http://127.0.0.1:5000" or '
                f'"sqlite:///mlflow.db"; got {type(tracking_uri).__name__}.'
            )
        sqlite = tracking_uri is None or tracking_uri.startswith("sqlite:")
        require("MLflowLogger", "mlflow", "mlflow", *(("sqlalchemy", "alembic") if sqlite else ()))
        if not isinstance(experiment, str) or not experiment:
            raise ValueError(f'MLflowLogger(experiment=...) expects a non-empty name such as "digits"; got {experiment!r}.')
        if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
            raise ValueError(f"MLflowLogger(queue_size=...) expects an int >= 1; got {queue_size!r}.")
        if isinstance(flush_timeout, bool) or not isinstance(flush_timeout, (int, float)) or flush_timeout <= 0:
            raise ValueError(f"MLflowLogger(flush_timeout=...) expects seconds > 0, e.g. flush_timeout=60; got {flush_timeout!r}.")
        super().__init__(tracking_uri, strict=strict)
        self.experiment, self.run_name = experiment, run_name
        self.queue_size, self.flush_timeout = queue_size, float(flush_timeout)
        self.run_id: str | None = None
        self._worker: Worker | None = None
        self._known: dict[str, int] = {}  # metric key -> highest step the run already has
        self._params: dict[str, str] = {}
        self._warned: set[str] = set()  # parameters warned about (too long, or changed)
        self._dropped = 0  # writes dropped in this open: the queue was full

    def log_key(self, run: Run | None) -> tuple[str, ...] | None:
        """The store, the experiment and the run's name: two loggers with all three equal
        would make two MLflow runs where one is meant."""
        key = super().log_key(run)
        if key is None:
            return None
        name = self.run_name or (run.name if run is not None else "")
        return (*key, self.experiment, name)

    def _where(self, target: Any) -> str:
        return str(target.resolve()) if isinstance(target, Path) else str(target)

    # ---- the backend protocol ----------------------------------------------------------------

    def _open(self, target: Any, resume: dict[str, Any] | None) -> None:
        if isinstance(target, Path):
            target.parent.mkdir(parents=True, exist_ok=True)
            uri, artifacts = f"sqlite:///{target.resolve()}", (target.parent / "mlflow-artifacts").resolve().as_uri()
        else:
            uri, artifacts = str(target), None
        run_id = None if resume is None else resume.get("run_id")
        self.run_id = None  # set by _start: a failed start leaves no run to mark
        run_name = self.run_name or (self._run.name if self._run is not None else None)
        self._worker = Worker(self.queue_size)
        self._dropped = 0
        self._worker.submit(lambda client: self._start(client, uri, artifacts, run_id, run_name))

    def _start(self, client: Any, uri: str, artifacts: str | None, run_id: str | None, run_name: str | None) -> Any:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        if run_id is not None:
            client.update_run(run_id, status="RUNNING")
            self._known = {k: max(m.step for m in client.get_metric_history(run_id, k)) for k in client.get_run(run_id).data.metrics}
            self._params = dict(client.get_run(run_id).data.params)
        else:
            found = client.get_experiment_by_name(self.experiment)
            experiment = found.experiment_id if found is not None else client.create_experiment(
                self.experiment, artifact_location=artifacts
            )
            run_id = client.create_run(experiment, run_name=run_name).info.run_id
            self._known, self._params = {}, {}
        self.run_id = run_id
        return client

    def _write(self, step: int, epoch: int, phase: str | None, values: Sequence[Loggable]) -> None:
        assert self._worker is not None
        stamp = int(time.time() * 1000)
        scalars = [(f"{phase}/{v.name}" if phase else v.name, float(v.value)) for v in values if isinstance(v, Scalar)]
        params = {k: v for h in values if isinstance(h, Hyperparameters) for k, v in h.values.items()}
        pictures = [v for v in values if isinstance(v, (Image, Figure))]
        texts = [v for v in values if isinstance(v, Text)]
        if any(isinstance(v, Histogram) for v in values):
            log.debug("MLflowLogger: histograms are not sent (MLflow has no histogram view).")
        calls: list[Callable[[Any], Any]] = []
        if scalars or params:
            calls.append(Send(self._send, [(k, v, stamp, step) for k, v in scalars], params))
        for picture in pictures:  # encoded here: a figure is not the worker's to touch
            name = f"{phase}/{picture.name}" if phase else picture.name
            calls.append(Call(self._artifact, picture.png(), name, step))
        calls.extend(Call(self._text, text) for text in texts)
        for call in calls:
            if not self._worker.submit(call):
                self._drop(step)

    def _drop(self, step: int) -> None:
        self._dropped += 1
        if self._dropped == 1:
            log.warning(
                "%s: MLflow is slower than this run logs: %d writes wait for it, so the write at step %d "
                "and any later one that finds the queue full are dropped, and training does not wait. "
                "Log less often (every=...), pass a larger queue_size, or use a faster store.",
                self.describe(), self.queue_size, step,
            )

    def _send(self, client: Any, scalars: list[tuple[str, float, int, int]], params: dict[str, Any]) -> None:
        from mlflow.entities import Metric, Param

        metrics = [Metric(k, v, stamp, step) for k, v, stamp, step in scalars if step > self._known.get(k, -1)]
        shortened = self._shortened(params)
        new = [Param(k, v) for k, v in shortened.items() if k not in self._params]
        for key, value in shortened.items():
            if key in self._params and self._params[key] != value and key not in self._warned:
                self._warned.add(key)
                log.warning("MLflowLogger: parameter %r was %r in this MLflow run; it stays (MLflow keeps one value).", key, self._params[key])
        for start in range(0, len(metrics), _METRICS_PER_BATCH):
            client.log_batch(self.run_id, metrics=metrics[start : start + _METRICS_PER_BATCH])
        for start in range(0, len(new), _PARAMS_PER_BATCH):
            client.log_batch(self.run_id, params=new[start : start + _PARAMS_PER_BATCH])
        self._params.update((p.key, p.value) for p in new)

    def _shortened(self, params: dict[str, Any]) -> dict[str, str]:
        try:
            from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH as limit
        except ImportError:  # moved in some MLflow version: its oldest documented limit
            limit = 500
        shortened = {}
        for key, value in params.items():
            text = str(value)
            if len(text) > limit:
                if key not in self._warned:
                    self._warned.add(key)
                    log.warning(
                        "MLflowLogger: parameter %r is %d characters long, over MLflow's limit of %d; it is "
                        "shortened to its first %d.", key, len(text), limit, limit,
                    )
                text = text[:limit]
            shortened[key] = text
        return shortened

    def _artifact(self, client: Any, png: bytes, name: str, step: int) -> None:
        folder, _, stem = name.rpartition("/")
        with tempfile.TemporaryDirectory() as scratch:
            path = Path(scratch) / f"{stem}-step{step:07d}.png"
            path.write_bytes(png)
            client.log_artifact(self.run_id, str(path), artifact_path=folder or None)

    def _text(self, client: Any, text: Text) -> None:
        client.log_text(self.run_id, text.text, f"{text.name}.md")

    def _flush(self) -> None:
        assert self._worker is not None
        self._worker.drain(self.flush_timeout)

    def _position(self) -> dict[str, Any]:
        return {"run_id": self.run_id}

    def _close(self) -> None:
        worker, self._worker = self._worker, None
        if worker is None:
            return
        try:
            if self._dropped > 1:
                log.info("%s dropped %d writes in all: the queue was full.", self.describe(), self._dropped)
            if not self._failed:
                if self.run_id is not None and worker.error is None:
                    worker.submit(Call(_terminate, self.run_id, "FINISHED"))
                    worker.drain(self.flush_timeout)
            elif self.run_id is not None and worker.error is not None and worker.settle(_LAST_WAIT):
                # A call raised, so MLflow answers (the worker only skips the rest, at once):
                # say the run failed. After a timeout the worker is stuck, and nothing waits.
                worker.submit(Call(_terminate, self.run_id, "FAILED"), always=True)
                worker.settle(min(self.flush_timeout, _LAST_WAIT))
        finally:
            worker.stop()


def _terminate(client: Any, run_id: str, status: str) -> None:
    client.set_terminated(run_id, status)
