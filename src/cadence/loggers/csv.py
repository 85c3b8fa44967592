"""CSVLogger: every scalar as one row of ``step,epoch,phase,name,value``, appended.

The long format means a metric that appears later adds rows, never columns: the file is only
ever appended to, and its header never changes. A resumed run cuts the file back to where it
was at the checkpoint (what a killed run wrote after it) and appends from there; a fresh fit
into a file with an earlier run's rows is refused (``cadence.loggers.backend``).
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from cadence.loggers.backend import Backend
from cadence.loggers.values import Loggable, Scalar

__all__ = ["CSVLogger", "HEADER"]

log = logging.getLogger(__name__)

HEADER = ("step", "epoch", "phase", "name", "value")


class CSVLogger(Backend):
    """Writes scalars to a CSV file in long format, ``step,epoch,phase,name,value``.

    Other values (images, histograms, text, hyperparameters) are not written. ``phase`` is
    empty for values of the whole run. Read it back with the ``csv`` module, or with
    ``pandas.read_csv(path).pivot_table(index="step", columns=["phase", "name"])``.

    Args:
        path: The file; None for ``metrics.csv`` in the run folder.
        strict: Raise ``LoggerError`` on a failed write instead of warning once.

    Example:
        >>> import csv, tempfile
        >>> from pathlib import Path
        >>> from cadence.loggers.values import Scalar
        >>> path = tempfile.mkdtemp() + "/metrics.csv"
        >>> logger = CSVLogger(path)
        >>> logger.write([Scalar("loss", 0.5)], step=10, epoch=1, phase="train")
        >>> logger.close()
        >>> list(csv.reader(Path(path).read_text().splitlines()))
        [['step', 'epoch', 'phase', 'name', 'value'], ['10', '1', 'train', 'loss', '0.5']]
    """

    default_name = "metrics.csv"
    shared_harm = "each would write a header of its own into the file, and cut away the other's rows on the next fit"

    def __init__(self, path: str | os.PathLike[str] | None = None, *, strict: bool = False) -> None:
        if path is not None and not isinstance(path, (str, os.PathLike)):
            raise TypeError(f'CSVLogger(path=...) expects a file path such as "metrics.csv"; got {type(path).__name__}.')
        super().__init__(None if path is None else Path(path), strict=strict)
        self._file: IO[str] | None = None
        self._writer: Any = None

    def _open(self, target: Any, resume: dict[str, Any] | None) -> None:
        path = Path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume is None and self._earlier(path):  # within a fit, a fresh fit into it was refused
            log.warning("CSVLogger: %s holds an earlier run's values; this fresh log replaces them.", path)
        keep = int(resume.get("bytes", 0)) if resume is not None else 0
        with open(path, "a+b") as raw:
            raw.truncate(min(keep, raw.seek(0, os.SEEK_END)))  # what a killed run wrote after its checkpoint
        self._file = open(path, "a", newline="", encoding="utf-8")
        self._writer = csv.writer(self._file)
        if self._file.tell() == 0:
            self._writer.writerow(HEADER)

    def _write(self, step: int, epoch: int, phase: str | None, values: Sequence[Loggable]) -> None:
        assert self._writer is not None
        self._writer.writerows(
            (step, epoch, phase or "", value.name, repr(float(value.value)))
            for value in values
            if isinstance(value, Scalar)
        )

    def _flush(self) -> None:
        assert self._file is not None
        self._file.flush()

    def _position(self) -> dict[str, Any]:
        assert self._file is not None
        return {"bytes": self._file.tell()}

    def _earlier(self, target: Any) -> str | None:
        try:
            with open(target, "rb") as file:
                file.readline()  # the header
                return "rows of an earlier run" if file.read(1) else None
        except FileNotFoundError:
            return None

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file = self._writer = None
