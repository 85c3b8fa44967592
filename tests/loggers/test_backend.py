"""The backend protocol: failures reported once (or raised with strict=True), everything
flushed and closed on every way a fit ends, writes at FitBegin deferred, shared backends."""

from __future__ import annotations

import csv
import errno
import logging
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cadence import Callback, CancelFit, LoggerError, LogMetrics, Metrics, MissingExtraError, Recorder, on
from cadence.events import BatchBegin, Event
from cadence.loggers import Backend, CSVLogger, Loggable, MLflowLogger, Scalar, TensorBoardLogger
from cadence.phases import Phase, TrainingPhase
from cadence.testing import make_test_learner


class DiskFull(Backend):
    """Writes its first ``good`` writes, then fails as a full disk does."""

    def __init__(self, good: int, *, strict: bool = False) -> None:
        super().__init__("disk", strict=strict)
        self.good, self.written, self.closed = good, [], 0

    def _open(self, target: Any, resume: dict[str, Any] | None) -> None:
        pass

    def _write(self, step: int, epoch: int, phase: str | None, values: Sequence[Loggable]) -> None:
        if len(self.written) >= self.good:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.written.append((step, phase, [v.name for v in values]))

    def _flush(self) -> None:
        pass

    def _close(self) -> None:
        self.closed += 1

    def _position(self) -> dict[str, Any]:
        return {"written": len(self.written)}


def test_a_full_disk_is_reported_once_and_training_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    disk = DiskFull(good=3)
    learner = make_test_learner(LogMetrics(disk, every=1), Metrics(), Recorder(), n_batches=4)
    with caplog.at_level(logging.WARNING, logger="cadence"):
        learner.fit(2)
    assert learner.cbstate.history[TrainingPhase()].steps == 8  # training went on
    reports = [r.getMessage() for r in caplog.records]
    assert reports == [
        "DiskFull('disk') could not write: OSError: [Errno 28] No space left on device. Logging to it stops for "
        "the rest of this fit; training goes on, and what it wrote before is kept. Pass strict=True to make this an error."
    ]
    assert [step for step, _, _ in disk.written] == [1, 2, 3] and disk.closed == 1


def test_strict_makes_the_failure_an_error_and_the_backend_is_still_closed() -> None:
    disk = DiskFull(good=2, strict=True)
    learner = make_test_learner(LogMetrics(disk, every=1), Metrics(), Recorder(), n_batches=4)
    with pytest.raises(LoggerError, match=r"DiskFull\('disk'\) could not write: OSError: .*No space left.*strict=True"):
        learner.fit(1)
    assert disk.closed == 1


def test_a_log_that_cannot_be_created_where_it_goes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # As root, permissions do not stop a write; a file where the folder should be does.
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    learner = make_test_learner(LogMetrics(CSVLogger(blocker / "metrics.csv"), every=1), Metrics(), Recorder(), n_batches=2)
    with caplog.at_level(logging.WARNING, logger="cadence"):
        learner.fit(1)
    (report,) = [r.getMessage() for r in caplog.records]
    assert "could not open: " in report and "training goes on" in report


class Raise(Callback):
    state_access: dict[str, Any] = {}

    """Raises ``error`` at the third training batch's BatchBegin."""

    def __init__(self, error: BaseException) -> None:
        self.error, self.seen = error, 0

    @on(BatchBegin, phase=TrainingPhase)
    def boom(self, event: Event, phase: Phase, learner: Any) -> None:
        self.seen += 1
        if self.seen == 3:
            raise self.error


@pytest.mark.parametrize("error", [RuntimeError("bug"), CancelFit("enough"), KeyboardInterrupt()], ids=type)
def test_everything_is_flushed_and_closed_however_the_fit_ends(tmp_path: Path, error: BaseException) -> None:
    path = tmp_path / "metrics.csv"
    logger = CSVLogger(path)
    tb = TensorBoardLogger(tmp_path / "tb")
    learner = make_test_learner(LogMetrics(logger, tb, every=1), Raise(error), Metrics(), Recorder(), n_batches=4)
    if isinstance(error, CancelFit):
        learner.fit(1)
    else:
        with pytest.raises(type(error)):
            learner.fit(1)
    assert logger._file is None and tb._writers == {}  # closed
    rows = list(csv.DictReader(path.read_text().splitlines()))
    assert [(r["step"], r["name"]) for r in rows] == [("1", "loss_step"), ("2", "loss_step")]
    assert [e.step for e in EventAccumulator(str(tmp_path / "tb" / "train")).Reload().Scalars("loss_step")] == [1, 2]


def test_writes_at_fit_begin_wait_for_the_position_and_shared_backends_close_once(tmp_path: Path) -> None:
    from cadence import LogConfig, LogHyperparams

    path = tmp_path / "metrics.csv"
    logger = CSVLogger(path)
    learner = make_test_learner(LogConfig(logger), LogHyperparams(logger, every=2), Recorder(), n_batches=4)
    learner.fit(1)
    rows = list(csv.DictReader(path.read_text().splitlines()))
    assert [(r["step"], r["name"]) for r in rows] == [("2", "lr/group0"), ("2", "momentum/group0"), ("2", "weight_decay/group0"),
                                                      ("4", "lr/group0"), ("4", "momentum/group0"), ("4", "weight_decay/group0")]
    assert logger._file is None


def test_import_cadence_imports_no_backend_library() -> None:
    code = "import sys, cadence, cadence.loggers; print(sorted(m for m in ('tensorboard', 'mlflow', 'matplotlib') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("module", "build", "extra"),
    [
        ("tensorboard", lambda: TensorBoardLogger(), "tensorboard"),
        ("mlflow", lambda: MLflowLogger(), "mlflow"),
        ("sqlalchemy", lambda: MLflowLogger(), "mlflow"),
        ("matplotlib", lambda: __import__("cadence").LearningCurves("plots"), "plots"),
    ],
)
def test_a_missing_extra_says_what_to_install(monkeypatch: pytest.MonkeyPatch, module: str, build: Any, extra: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # as if it were not installed
    with pytest.raises(MissingExtraError, match=rf"needs {module}, which is not installed\. Install it with: pip install 'cadence\[{extra}\]'"):
        build()
    assert issubclass(MissingExtraError, ImportError)


def test_a_backend_needs_a_run_folder_or_a_place() -> None:
    from cadence import MissingStateError

    with pytest.raises(MissingStateError, match=r"LogMetrics reads cbstate.run, but no callback writes it.\nAdd RunFolder\(\)"):
        make_test_learner(LogMetrics(CSVLogger()), Metrics(), Recorder())


def test_logger_callbacks_check_their_backends() -> None:
    with pytest.raises(ValueError, match=r"LogMetrics needs at least one backend to write to, e.g. LogMetrics\(TensorBoardLogger\(\), CSVLogger\(\)\)"):
        LogMetrics()
    with pytest.raises(TypeError, match=r"LogMetrics got the class CSVLogger; pass an instance: CSVLogger\(\)"):
        LogMetrics(CSVLogger)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"LogMetrics writes to logger backends such as .*; got str"):
        LogMetrics("tb")  # type: ignore[arg-type]
    logger = CSVLogger("x.csv")
    with pytest.raises(ValueError, match=r"LogMetrics was given the same backend twice; pass each once"):
        LogMetrics(logger, logger)
    with pytest.raises(ValueError, match=r"LogMetrics\(every=...\) expects a number of training steps >= 1, e.g. every=50; got 0"):
        LogMetrics(logger, every=0)
    with pytest.raises(TypeError, match=r"CSVLogger\(strict=...\) expects True or False"):
        CSVLogger("x.csv", strict="yes")  # type: ignore[arg-type]
