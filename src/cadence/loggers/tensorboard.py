"""TensorBoardLogger: event files written with the ``tensorboard`` package's own writer.

Layout, in the logger's folder (``<run folder>/tensorboard`` by default)::

    tensorboard/            values of the whole run: the configuration text, the hparams
                            summary (HPARAMS tab), histograms
    tensorboard/train/      the training phase's scalars and images
    tensorboard/valid/      the validation phase's

A phase is a TensorBoard run of its own with the same tags, so ``loss`` of ``train`` and of
``valid`` overlay on one chart, and the HPARAMS tab finds each metric as (group, tag) =
(phase, name). The summaries are built with TensorBoard's protos and plugin metadata (no
TensorFlow, no ``torch.utils.tensorboard``, which needs the same package and adds nothing).

Its own files: every event file this logger writes ends in ``.<token>.cadence``, and it
records each one in ``.cadence-files.json`` in its folder before creating it. Only the files
that record lists are ever cut back or removed, so other runs' event files, in this folder or
below it (another logger's folder nested inside), are never touched, and no folder is walked.

Resuming: a checkpoint records the sizes of this logger's files; a resumed run cuts them back
to those sizes and removes the ones begun after the checkpoint. That purges exactly what the
killed run wrote after its checkpoint, also at the checkpoint's own step (TensorBoard's
``SessionLog.START`` purge keeps those).
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cadence.loggers.backend import Backend
from cadence.loggers.extras import require
from cadence.loggers.values import Figure, Histogram, Hyperparameters, Image, Loggable, Scalar, Text

__all__ = ["TensorBoardLogger"]

log = logging.getLogger(__name__)

_SUFFIX = ".cadence"
_RECORD = ".cadence-files.json"  # this logger's event files, as patterns: "train/events.out.tfevents.*.<token>.cadence"
_ENTRY = re.compile(r"^(?:[^/*?\[\]]+/)*events\.out\.tfevents\.\*\.[0-9a-f]+\.cadence$")


class TensorBoardLogger(Backend):
    """Writes scalars, images, figures, histograms, text and hyperparameters for TensorBoard.

    Open it with ``tensorboard --logdir runs`` (every run) or ``--logdir runs/<name>``; not
    with ``--logdir runs/<name>/tensorboard``, where the HPARAMS tab finds no metrics.

    Args:
        folder: Where the event files go; None for ``tensorboard`` in the run folder.
        flush_secs: How often TensorBoard's writer thread flushes on its own (cadence also
            flushes at every epoch end and before each checkpoint).
        strict: Raise ``LoggerError`` on a failed write instead of warning once.

    Raises:
        MissingExtraError: the ``tensorboard`` package is not installed.

    Example:
        >>> import tempfile
        >>> from cadence.loggers.values import Scalar
        >>> from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        >>> folder = tempfile.mkdtemp()
        >>> logger = TensorBoardLogger(folder)
        >>> logger.write([Scalar("loss", 0.5)], step=3, epoch=1, phase="train")
        >>> logger.close()
        >>> events = EventAccumulator(folder + "/train").Reload()
        >>> [(e.step, e.value) for e in events.Scalars("loss")]
        [(3, 0.5)]
    """

    default_name = "tensorboard"
    shared_harm = "each would remove the other's event files as an earlier run's"

    def __init__(
        self, folder: str | os.PathLike[str] | None = None, *, flush_secs: float = 30.0, strict: bool = False
    ) -> None:
        require("TensorBoardLogger", "tensorboard", "tensorboard")
        if folder is not None and not isinstance(folder, (str, os.PathLike)):
            raise TypeError(f'TensorBoardLogger(folder=...) expects a path such as "logs"; got {type(folder).__name__}.')
        if isinstance(flush_secs, bool) or not isinstance(flush_secs, (int, float)) or flush_secs <= 0:
            raise ValueError(f"TensorBoardLogger(flush_secs=...) expects a number of seconds > 0; got {flush_secs!r}.")
        super().__init__(None if folder is None else Path(folder), strict=strict)
        self.flush_secs = float(flush_secs)
        self._folder: Path | None = None
        self._files: dict[str, Path] = {}  # this log's event files, by their record entry
        self._writers: dict[str, Any] = {}
        self._session = False  # an hparams session was started in this open

    # ---- the backend protocol ----------------------------------------------------------------

    def _open(self, target: Any, resume: dict[str, Any] | None) -> None:
        folder = Path(target)
        folder.mkdir(parents=True, exist_ok=True)
        kept = dict((resume or {}).get("files", {}))
        self._folder, self._files = folder, {}
        removed = 0
        for entry in dict.fromkeys([*_recorded(folder), *kept]):
            path = _find(folder, entry)
            if path is None:
                continue
            if entry in kept:
                with open(path, "r+b") as file:
                    file.truncate(int(kept[entry]))
                self._files[entry] = path
            else:
                path.unlink()  # begun after the checkpoint (or by the run this one replaces)
                removed += 1
        if removed and resume is None:  # within a fit, a fresh fit into them was refused
            log.warning(
                "TensorBoardLogger: %s holds %d event file(s) of an earlier run; this fresh log "
                "replaces them.", folder, removed,
            )
        self._record()
        self._writers = {}
        self._session = False

    def _earlier(self, target: Any) -> str | None:
        found = sum(_find(Path(target), entry) is not None for entry in _recorded(Path(target)))
        return f"{found} event file(s) of an earlier run" if found else None

    def _write(self, step: int, epoch: int, phase: str | None, values: Sequence[Loggable]) -> None:
        from tensorboard.compat.proto import summary_pb2

        summaries: list[Any] = []
        for value in values:
            if isinstance(value, Hyperparameters):
                self._hparams(value, step)
                continue
            summaries.append(_summary_value(value, summary_pb2))
        if summaries:
            self._add(phase or "", summary_pb2.Summary(value=summaries), step)

    def _flush(self) -> None:
        for writer in self._writers.values():
            writer.flush()

    def _position(self) -> dict[str, Any]:
        return {"files": {entry: path.stat().st_size for entry, path in self._files.items()}}

    def _close(self) -> None:
        if self._session:
            from tensorboard.plugins.hparams import api_pb2

            self._add("", _hparams_summary("session_end_info", status=api_pb2.STATUS_SUCCESS), self._step)
            self._session = False
        writers, self._writers = self._writers, {}
        for writer in writers.values():
            writer.close()

    # ---- internals ---------------------------------------------------------------------------

    def _add(self, run: str, summary: Any, step: int) -> None:
        from tensorboard.compat.proto import event_pb2

        writer = self._writers.get(run)
        if writer is None:
            from tensorboard.summary.writer.event_file_writer import EventFileWriter

            assert self._folder is not None
            suffix = f".{secrets.token_hex(8)}{_SUFFIX}"
            entry = f"{run}/" * bool(run) + f"events.out.tfevents.*{suffix}"
            self._record(entry)  # before the file exists: a kill in between leaves no file unrecorded
            writer = EventFileWriter(str(self._folder / run), flush_secs=self.flush_secs, filename_suffix=suffix)
            path = _find(self._folder, entry)
            assert path is not None  # the writer creates its file at once
            self._files[entry] = path
            self._writers[run] = writer
        writer.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

    def _record(self, *new: str) -> None:
        """Write the record of this log's files (those it has, and ``new``), atomically."""
        assert self._folder is not None
        temporary = self._folder / f"{_RECORD}.tmp"
        temporary.write_text(json.dumps({"files": [*self._files, *new]}, indent=1))
        os.replace(temporary, self._folder / _RECORD)

    def _hparams(self, value: Hyperparameters, step: int) -> None:
        """The HPARAMS tab's summaries, in the logger's root folder: the experiment (each
        hyperparameter with its type, each metric as (group, tag) = (phase, name)) and the
        session's values."""
        from tensorboard.plugins.hparams import api_pb2

        infos = [api_pb2.HParamInfo(name=name, type=_data_type(v, api_pb2)) for name, v in value.values.items()]
        metrics = []
        for key in value.metrics:
            group, _, tag = key.rpartition("/")
            dataset = {"train": api_pb2.DATASET_TRAINING, "valid": api_pb2.DATASET_VALIDATION}.get(group, 0)
            metrics.append(api_pb2.MetricInfo(name=api_pb2.MetricName(group=group, tag=tag), dataset_type=dataset))
        self._add("", _hparams_summary("experiment", hparam_infos=infos, metric_infos=metrics), step)
        self._add("", _hparams_summary("session_start_info", hparams=dict(value.values)), step)
        self._session = True


def _recorded(folder: Path) -> list[str]:
    """The entries of ``folder``'s record of a logger's files (none when there is no record)."""
    try:
        entries = json.loads((folder / _RECORD).read_text()).get("files", [])
    except FileNotFoundError:
        return []
    except (ValueError, AttributeError):
        log.warning("TensorBoardLogger: %s is not a record of event files; it is ignored.", folder / _RECORD)
        return []
    return [e for e in entries if isinstance(e, str) and _ENTRY.match(e) and ".." not in e.split("/")]


def _find(folder: Path, entry: str) -> Path | None:
    """The event file a record entry stands for, or None when it is gone."""
    return next((p for p in folder.glob(entry) if p.is_file()), None)


def _data_type(value: object, api_pb2: Any) -> Any:
    if isinstance(value, bool):
        return api_pb2.DATA_TYPE_BOOL
    if isinstance(value, (int, float)):
        return api_pb2.DATA_TYPE_FLOAT64
    return api_pb2.DATA_TYPE_STRING


def _hparams_summary(kind: str, **fields: Any) -> Any:
    """One hparams plugin summary: ``kind`` is ``experiment``, ``session_start_info`` or
    ``session_end_info`` (TensorBoard's tags ``_hparams_/<kind>``)."""
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    if kind == "experiment":
        data = plugin_data_pb2.HParamsPluginData(
            experiment=api_pb2.Experiment(time_created_secs=time.time(), **fields)
        )
    elif kind == "session_start_info":
        info = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
        for name, v in fields["hparams"].items():
            if isinstance(v, bool):
                info.hparams[name].bool_value = v
            elif isinstance(v, (int, float)):
                info.hparams[name].number_value = float(v)
            else:
                info.hparams[name].string_value = str(v)
        data = plugin_data_pb2.HParamsPluginData(session_start_info=info)
    else:
        data = plugin_data_pb2.HParamsPluginData(
            session_end_info=plugin_data_pb2.SessionEndInfo(end_time_secs=time.time(), **fields)
        )
    tag = {"experiment": metadata.EXPERIMENT_TAG, "session_start_info": metadata.SESSION_START_INFO_TAG}.get(
        kind, metadata.SESSION_END_INFO_TAG
    )
    return summary_pb2.Summary(
        value=[summary_pb2.Summary.Value(tag=tag, metadata=metadata.create_summary_metadata(data), tensor=metadata.NULL_TENSOR)]
    )


def _summary_value(value: Loggable, summary_pb2: Any) -> Any:
    """A ``Summary.Value`` for one scalar, image, figure, histogram or text."""
    from tensorboard.util import tensor_util

    if isinstance(value, Scalar):  # the classic form: EventAccumulator.Scalars reads it, as TensorBoard does
        return summary_pb2.Summary.Value(tag=value.name, simple_value=float(value.value))
    if isinstance(value, (Image, Figure)):
        png = value.png()
        # Size and colour type from the PNG's IHDR chunk; TensorBoard counts channels.
        width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
        channels = {0: 1, 2: 3, 4: 2, 6: 4}.get(png[25], 4)
        image = summary_pb2.Summary.Image(height=height, width=width, colorspace=channels, encoded_image_string=png)
        return summary_pb2.Summary.Value(tag=value.name, image=image)
    if isinstance(value, Histogram):
        edges, counts = value.buckets()
        import numpy as np

        flat = np.asarray(value.values, dtype=np.float64).ravel()
        flat = flat[np.isfinite(flat)]
        histogram = summary_pb2.HistogramProto(
            min=float(flat.min()) if flat.size else 0.0,
            max=float(flat.max()) if flat.size else 0.0,
            num=float(flat.size),
            sum=float(flat.sum()),
            sum_squares=float((flat * flat).sum()),
            bucket_limit=[float(e) for e in edges[1:]],
            bucket=[float(c) for c in counts],
        )
        return summary_pb2.Summary.Value(tag=value.name, histo=histogram)
    if isinstance(value, Text):
        from tensorboard.plugins.text import metadata as text

        return summary_pb2.Summary.Value(
            tag=value.name,
            metadata=text.create_summary_metadata(display_name=value.name, description=""),
            tensor=tensor_util.make_tensor_proto(value.text),
        )
    raise TypeError(f"TensorBoardLogger cannot write a {type(value).__name__}.")
