"""MLflowLogger: metrics, parameters and artifacts sent to MLflow, off the training thread.

MLflow's calls are slow (a database write, or a request to a server), so a worker thread makes
them: a write puts one batch on a bounded queue and returns; the queue is drained at every
epoch end, before each checkpoint and at ``FitEnd``. A full queue makes the training thread
wait (memory stays bounded). Metrics go in batches (``log_batch``), never one call per value.

The default store is a SQLite database in the run folder, ``sqlite:///runs/<name>/mlflow.db``,
with the artifacts beside it in ``mlflow-artifacts/``: recent MLflow refuses its plain file
store unless an environment variable is set, and a server is not always there.

Resuming: a checkpoint records the MLflow run's id; the resumed fit continues that run, and
skips the values of the steps a killed run had already sent after its checkpoint (MLflow
cannot delete metric values), so no step appears twice.
"""

from __future__ import annotations

import logging
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cadence.loggers.backend import Backend, require
from cadence.loggers.values import Figure, Histogram, Hyperparameters, Image, Loggable, Scalar, Text

__all__ = ["MLflowLogger"]

log = logging.getLogger(__name__)

_METRICS_PER_BATCH, _PARAMS_PER_BATCH = 1000, 100  # log_batch's limits per call
_STOP = object()


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
        queue_size: Writes waiting for the worker thread before a write waits.
        flush_timeout: Seconds a flush waits for MLflow before it counts as a failure.
        strict: Raise ``LoggerError`` on a failure instead of warning once.

    Parameters longer than MLflow's limit are shortened, with a warning.

    Raises:
        MissingExtraError: ``mlflow-skinny`` (or, for SQLite, SQLAlchemy and Alembic) is not
            installed.
    """

    default_name = "mlflow.db"

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
            raise ValueError(f'MLflowLogger(experiment=...) expects a non-empty name; got {experiment!r}.')
        if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
            raise ValueError(f"MLflowLogger(queue_size=...) expects an int >= 1; got {queue_size!r}.")
        if isinstance(flush_timeout, bool) or not isinstance(flush_timeout, (int, float)) or flush_timeout <= 0:
            raise ValueError(f"MLflowLogger(flush_timeout=...) expects seconds > 0; got {flush_timeout!r}.")
        super().__init__(tracking_uri, strict=strict)
        self.experiment, self.run_name = experiment, run_name
        self.queue_size, self.flush_timeout = queue_size, float(flush_timeout)
        self.run_id: str | None = None
        self._worker: _Worker | None = None
        self._known: dict[str, int] = {}  # metric key -> highest step the run already has
        self._params: dict[str, str] = {}

    # ---- the backend protocol ----------------------------------------------------------------

    def _open(self, target: Any, resume: dict[str, Any] | None) -> None:
        if isinstance(target, Path):
            target.parent.mkdir(parents=True, exist_ok=True)
            uri, artifacts = f"sqlite:///{target.resolve()}", (target.parent / "mlflow-artifacts").resolve().as_uri()
        else:
            uri, artifacts = str(target), None
        run_id = None if resume is None else resume.get("run_id")
        run_name = self.run_name or (self._run.name if self._run is not None else None)
        self._worker = _Worker(self.queue_size)
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
        if scalars or params:
            self._worker.submit(lambda client: self._send(client, scalars, params, step, stamp))
        for picture in pictures:  # encoded here: a figure is not the worker's to touch
            name = f"{phase}/{picture.name}" if phase else picture.name
            self._worker.submit(_Call(self._artifact, picture.png(), name, step))
        for text in texts:
            self._worker.submit(_Call(self._text, text))

    def _send(self, client: Any, scalars: list[tuple[str, float]], params: dict[str, Any], step: int, stamp: int) -> None:
        from mlflow.entities import Metric, Param

        metrics = [Metric(k, v, stamp, step) for k, v in scalars if step > self._known.get(k, -1)]
        new = [Param(k, v) for k, v in self._shortened(params).items() if k not in self._params]
        for k, v in params.items():
            if k in self._params and self._params[k] != self._shortened({k: v})[k]:
                log.warning("MLflowLogger: parameter %r was %r in this MLflow run; it stays (MLflow keeps one value).", k, self._params[k])
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
        self._flush()
        return {"run_id": self.run_id}

    def _close(self) -> None:
        worker, self._worker = self._worker, None
        if worker is None:
            return
        try:
            if self.run_id is not None and worker.error is None:
                worker.submit(lambda client: client.set_terminated(self.run_id, "FINISHED"))
            worker.drain(self.flush_timeout)
        finally:
            worker.stop()


class _Call:
    """``method(client, *args)``, queued for the worker."""

    def __init__(self, method: Callable[..., Any], *args: Any) -> None:
        self.method, self.args = method, args

    def __call__(self, client: Any) -> Any:
        return self.method(client, *self.args)


class _Worker:
    """One thread making MLflow's calls in order, fed by a bounded queue. The first call
    returns the client the later ones get; the first error stops the rest and is raised on
    the training thread by the next ``submit`` or ``drain``."""

    def __init__(self, size: int) -> None:
        self.error: BaseException | None = None
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=size)
        self._client: Any = None
        self._thread = threading.Thread(target=self._run, name="cadence-mlflow", daemon=True)
        self._thread.start()

    def submit(self, call: Callable[[Any], Any]) -> None:
        self._raise()
        self._queue.put(call)

    def drain(self, timeout: float) -> None:
        done = threading.Event()
        self._raise()
        try:
            self._queue.put(done, timeout=timeout)
        except queue.Full:
            raise TimeoutError(f"MLflow did not take a write for {timeout:g} s") from None
        if not done.wait(timeout):
            raise TimeoutError(f"MLflow did not answer for {timeout:g} s")
        self._raise()

    def stop(self) -> None:
        try:
            self._queue.put(_STOP, timeout=1.0)
        except queue.Full:
            return  # stuck in a call: the daemon thread ends with the process
        self._thread.join(timeout=5.0)

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        while True:
            call = self._queue.get()
            if call is _STOP:
                return
            if isinstance(call, threading.Event):  # drain's marker: everything before it is done
                call.set()
                continue
            if self.error is not None:
                continue
            try:
                result = call(self._client)
                if self._client is None:
                    self._client = result
            except BaseException as error:  # reported on the training thread
                self.error = error
