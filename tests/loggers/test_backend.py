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
        self.written.append((step, phase, [getattr(v, "name", "hyperparameters") for v in values]))

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


class Broken(DiskFull):
    """A DiskFull whose flushes fail too once a write has, as a gone MLflow server's drains do."""

    def _flush(self) -> None:
        if len(self.written) >= self.good:
            raise OSError(errno.ENOSPC, "No space left on device")


def test_strict_closes_the_backend_even_when_every_later_flush_fails() -> None:
    disk = Broken(good=2, strict=True)
    learner = make_test_learner(LogMetrics(disk, every=1), Metrics(), Recorder(), n_batches=4)
    with pytest.raises(LoggerError, match=r"could not write"):
        learner.fit(1)
    assert disk.closed == 1 and not disk._is_open


def test_the_warning_ends_with_one_full_stop(caplog: pytest.LogCaptureFixture) -> None:
    class Stops(DiskFull):
        def _write(self, step: int, epoch: int, phase: str | None, values: Sequence[Loggable]) -> None:
            raise ValueError("Scale them, e.g. pixels / pixels.max().")

    with caplog.at_level(logging.WARNING, logger="cadence"):
        make_test_learner(LogMetrics(Stops(good=0), every=1), Metrics(), Recorder(), n_batches=2).fit(1)
    (report,) = [r.getMessage() for r in caplog.records]
    assert "pixels.max(). Logging to it stops" in report and ".." not in report


class Flaky(CSVLogger):
    """A CSV file whose disk fills up at step 5."""

    def _write(self, step: int, epoch: int, phase: str | None, values: Sequence[Loggable]) -> None:
        if step == 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        super()._write(step, epoch, phase, values)


def test_a_resume_after_a_failure_keeps_what_was_written_before_it(tmp_path: Path) -> None:
    from cadence import Checkpointer

    def learner(logger: CSVLogger) -> Any:
        checkpoints = Checkpointer(tmp_path / "checkpoints", every_epochs=1, keep_last=5)
        return make_test_learner(LogMetrics(logger, every=1), checkpoints, Metrics(), Recorder(), n_batches=4)

    path = tmp_path / "metrics.csv"
    first = learner(Flaky(path))
    first.fit(2)  # fails at step 5; the checkpoint after epoch 2 records the last good flush
    before = path.read_text().splitlines()
    assert len(before) == 1 + 4 + 2  # header, steps 1-4, epoch 1's train and valid loss
    learner(CSVLogger(path)).fit(3, resume="latest")
    after = path.read_text().splitlines()
    assert after[: len(before)] == before
    assert [r["step"] for r in csv.DictReader(after) if r["name"] == "loss_step"] == ["1", "2", "3", "4", "9", "10", "11", "12"]


class Counting(DiskFull):
    """Counts the flushes that reach it."""

    def __init__(self) -> None:
        super().__init__(good=10**9)
        self.flushes = 0

    def _flush(self) -> None:
        self.flushes += 1


def test_a_shared_backend_is_flushed_once_per_epoch_and_not_at_all_with_nothing_new() -> None:
    from cadence import LogConfig, LogHyperparams

    shared = Counting()
    loggers = [LogMetrics(shared, every=100), LogHyperparams(shared, every=100), LogConfig(shared)]
    learner = make_test_learner(*loggers, Metrics(), Recorder(), n_batches=4)
    learner.fit(3)
    assert shared.flushes == 3  # one per epoch, after its validation; closing found nothing new
    for callback in loggers:
        callback.state_dict()  # as a checkpoint does: nothing new since the last flush
    assert shared.flushes == 3


def test_a_backend_without_a_place_says_where_it_could_write() -> None:
    with pytest.raises(LoggerError, match=r'CSVLogger has no location and no run folder to write in\. Add RunFolder\(\) to the callbacks, or give it a place, e\.g\. CSVLogger\("logs"\)'):
        CSVLogger().write([Scalar("loss", 0.5)], step=1, epoch=1, phase="train")


def test_a_checkpoint_of_other_backends_is_refused() -> None:
    one = LogMetrics(CSVLogger("a.csv"))
    with pytest.raises(ValueError, match=r"LogMetrics\.load_state_dict got the state of 2 backend\(s\); this LogMetrics has 1\. Resume with the backends the checkpoint was taken with"):
        one.load_state_dict({"backends": [{"step": 0, "position": {}}, {"step": 0, "position": {}}]})


# ---- one log, one run ---------------------------------------------------------------------------


def _named_learner(root: Path, *callbacks: Any) -> Any:
    from cadence import RunFolder

    return make_test_learner(RunFolder("digits", root=root), LogMetrics(CSVLogger(), TensorBoardLogger(), every=2), *callbacks, Metrics(), Recorder(), n_batches=4)


@pytest.mark.parametrize("n_epochs", [1, 0])
def test_a_fresh_fit_into_an_earlier_runs_logs_is_refused_before_training(tmp_path: Path, n_epochs: int) -> None:
    _named_learner(tmp_path).fit(2)
    run = tmp_path / "digits"
    files = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    again = _named_learner(tmp_path)
    with pytest.raises(LoggerError, match=(
        rf"CSVLogger\('{run}/metrics\.csv'\) holds rows of an earlier run, and this fit starts a new run \(no resume=\), "
        rf"which would replace them\. A log belongs to one run, as a checkpoint folder does\. Either continue that run "
        rf'from its checkpoint: fit\({n_epochs}, resume="latest"\) \(with a Checkpointer\); or give this run a name of its '
        rf'own: RunFolder\("digits-2"\); or start over after moving the old run folder aside: '
        rf"os\.rename\('{run}', '{run}-previous'\)\."
    )):
        again.fit(n_epochs)
    assert again.cbstate.history[TrainingPhase()].steps == 0  # refused at FitBegin
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == files  # nothing replaced


def test_a_fresh_fit_into_an_earlier_tensorboard_log_or_file_is_refused(tmp_path: Path) -> None:
    make_test_learner(LogMetrics(TensorBoardLogger(tmp_path / "tb"), CSVLogger(tmp_path / "m.csv")), Metrics(), Recorder(), n_batches=2).fit(1)
    with pytest.raises(LoggerError, match=rf"TensorBoardLogger\('{tmp_path}/tb'\) holds 2 event file\(s\) of an earlier run, .* or give this run a place of its own: TensorBoardLogger\('{tmp_path}/tb-2'\); or start over after moving it aside: os\.rename\('{tmp_path}/tb', '{tmp_path}/tb-previous'\)\."):
        make_test_learner(LogMetrics(TensorBoardLogger(tmp_path / "tb")), Metrics(), Recorder(), n_batches=2).fit(1)
    with pytest.raises(LoggerError, match=rf"CSVLogger\('{tmp_path}/m\.csv'\) holds rows of an earlier run, .* CSVLogger\('{tmp_path}/m-2\.csv'\)"):
        make_test_learner(LogMetrics(CSVLogger(tmp_path / "m.csv")), Metrics(), Recorder(), n_batches=2).fit(1)


def test_a_relaunch_that_asks_to_resume_but_has_no_checkpoint_starts_the_logs_over(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from cadence import Checkpointer

    _named_learner(tmp_path).fit(1)  # an earlier launch that saved no checkpoint
    with caplog.at_level(logging.WARNING):
        _named_learner(tmp_path, Checkpointer()).fit(2, resume="latest")
    assert 'yet: fit(resume="latest") starts from the beginning.' in caplog.text
    rows = list(csv.DictReader((tmp_path / "digits" / "metrics.csv").read_text().splitlines()))
    assert [r["step"] for r in rows if r["name"] == "loss_step"] == ["2", "4", "6", "8"]  # no step twice
