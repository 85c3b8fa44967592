"""SIGTERM and Ctrl-C during fit: where the checkpoint is saved, what the warning says, and what
a second signal does; each case as docs/how-to/resume.md states it."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from cadence import Callback, CancelFit, on
from cadence.callbacks.checkpointer import Checkpointer
from cadence.callbacks.lambda_callback import LambdaCallback
from cadence.checkpointing.files import list_checkpoints, load_checkpoint
from cadence.checkpointing.interrupts import Interrupts
from cadence.events import BatchEnd, EpochBegin, EpochEnd, Event, FitEnd
from cadence.phases import Phase, TrainingPhase, ValidationPhase
from cadence.testing import make_test_learner

SECOND_INT = "press Ctrl-C again to stop at once, without saving"
SECOND_TERM = "a second SIGTERM or Ctrl-C stops at once, without saving"
IN_BATCH = "saving a checkpoint at the end of this training batch, then stopping"
NEXT_BATCH = "saving a checkpoint at the end of the next training batch, then stopping"
IN_VALIDATION = (
    "finishing this epoch's validation (all of it: a checkpoint in the middle of it could not "
    "resume exactly), then saving a checkpoint and stopping"
)
AT_EPOCH_END = "saving a checkpoint at the end of this epoch, then stopping"


def names(folder: Path) -> list[str]:
    return [p.stem for p in list_checkpoints(folder)]


def send_at(event: type[Event], phase: type[Phase], at: int, signum: int, times: int = 1) -> LambdaCallback:
    """A callback that sends ``signum`` to this process (``times`` times) at the ``at``-th
    ``event`` of ``phase``."""
    seen = [0]

    def send(event: Event, phase: Phase, learner: Any) -> None:
        seen[0] += 1
        if seen[0] == at:
            for _ in range(times):
                os.kill(os.getpid(), signum)

    return LambdaCallback(send, event, phase=phase)


def counter(event: type[Event], phase: type[Phase]) -> tuple[LambdaCallback, list[int]]:
    seen: list[int] = []
    return LambdaCallback(lambda e, p, learner: seen.append(1), event, phase=phase), seen


class FitEndLog(Callback):
    def __init__(self) -> None:
        self.ended = 0

    @on(FitEnd)
    def end(self, event: Event, phase: Phase, learner: Any) -> None:
        self.ended += 1


default_sigint = pytest.mark.skipif(
    signal.getsignal(signal.SIGINT) is not signal.default_int_handler,
    reason="SIGINT has a custom handler here, which the Checkpointer leaves alone",
)


def stop(learner: Any, signum: int, n_epochs: int = 5) -> BaseException:
    """Run ``fit`` and return what it raised: ``KeyboardInterrupt`` or ``SystemExit(143)``."""
    expected: type[BaseException] = KeyboardInterrupt if signum == signal.SIGINT else SystemExit
    with pytest.raises(expected) as info:
        learner.fit(n_epochs)
    if signum == signal.SIGTERM:
        assert info.value.code == 143  # type: ignore[attr-defined]
    return info.value


SIGNALS = [
    pytest.param(signal.SIGTERM, "SIGTERM", SECOND_TERM, id="SIGTERM"),
    pytest.param(signal.SIGINT, "SIGINT", SECOND_INT, id="Ctrl-C", marks=default_sigint),
]


@pytest.mark.parametrize(("signum", "name", "second"), SIGNALS)
def test_in_a_training_batch_it_saves_at_the_end_of_that_batch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, signum: int, name: str, second: str
) -> None:
    before = signal.getsignal(signum)
    ended = FitEndLog()
    sender = send_at(BatchEnd, TrainingPhase, 3, signum)
    learner = make_test_learner(sender, ended, Checkpointer(tmp_path, every_epochs=None), n_batches=4)
    with caplog.at_level(logging.INFO):
        raised = stop(learner, signum)
    saved = list_checkpoints(tmp_path)
    assert names(tmp_path) == ["checkpoint-000001-epoch0-batch3"] and ended.ended == 1
    assert load_checkpoint(saved[0]).meta["reason"] == name
    assert f"fit cancelled by Checkpointer.batch_end: {name}: checkpoint saved to {saved[0]}" in caplog.text
    assert f"{name}: {IN_BATCH} ({second})." in caplog.text
    stopped = f'Training stopped by {name}: checkpoint saved to {saved[0]}; continue with fit(5, resume="latest").'
    assert (str(raised) if signum == signal.SIGINT else caplog.text).count(stopped) == 1
    assert signal.getsignal(signum) is before


@pytest.mark.parametrize(("signum", "name", "second"), SIGNALS)
def test_in_validation_the_epoch_is_validated_to_its_end_then_saved(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, signum: int, name: str, second: str
) -> None:
    counting, validated = counter(BatchEnd, ValidationPhase)
    sender = send_at(BatchEnd, ValidationPhase, 1, signum)  # the first of 4 validation batches
    learner = make_test_learner(sender, counting, Checkpointer(tmp_path, every_epochs=None), n_batches=4)
    with caplog.at_level(logging.WARNING):
        stop(learner, signum, n_epochs=3)
    assert len(validated) == 4  # all of them ran, as the warning says
    assert names(tmp_path) == ["checkpoint-000001-epoch1-batch0"]
    assert f"{name}: {IN_VALIDATION} ({second})." in caplog.text
    # The checkpoint is an exact epoch boundary: resuming it ends as a run never stopped.
    uninterrupted = make_test_learner(n_batches=4)
    uninterrupted.fit(3)
    resumed = make_test_learner(Checkpointer(tmp_path), n_batches=4)
    resumed.fit(3, resume="latest")
    assert torch.equal(resumed.model.weight, uninterrupted.model.weight)


def test_before_an_epochs_first_batch_it_saves_after_that_batch(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sender = send_at(EpochBegin, TrainingPhase, 2, signal.SIGTERM)  # between epochs 1 and 2
    learner = make_test_learner(sender, Checkpointer(tmp_path, every_epochs=None), n_batches=4)
    with caplog.at_level(logging.WARNING):
        stop(learner, signal.SIGTERM)
    assert names(tmp_path) == ["checkpoint-000001-epoch1-batch1"]
    assert f"SIGTERM: {NEXT_BATCH} ({SECOND_TERM})." in caplog.text


def test_after_an_epochs_last_batch_it_validates_then_saves(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sender = send_at(EpochEnd, TrainingPhase, 1, signal.SIGTERM)
    counting, validated = counter(BatchEnd, ValidationPhase)
    learner = make_test_learner(sender, counting, Checkpointer(tmp_path, every_epochs=None), n_batches=4)
    with caplog.at_level(logging.WARNING):
        stop(learner, signal.SIGTERM)
    assert len(validated) == 4 and names(tmp_path) == ["checkpoint-000001-epoch1-batch0"]
    assert f"SIGTERM: {IN_VALIDATION} ({SECOND_TERM})." in caplog.text


def test_without_validation_after_the_last_batch_it_saves_at_the_epoch_end(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sender = send_at(EpochEnd, TrainingPhase, 2, signal.SIGTERM)
    learner = make_test_learner(sender, Checkpointer(tmp_path, every_epochs=None), n_batches=4)
    with caplog.at_level(logging.WARNING), pytest.raises(SystemExit):
        learner.fit(5, data=(learner.data[0], None))  # type: ignore[index]
    assert names(tmp_path) == ["checkpoint-000001-epoch2-batch0"]
    assert f"SIGTERM: {AT_EPOCH_END} ({SECOND_TERM})." in caplog.text


@default_sigint
def test_a_second_ctrl_c_stops_at_once_without_saving(tmp_path: Path) -> None:
    ended = FitEndLog()
    sender = send_at(BatchEnd, TrainingPhase, 6, signal.SIGINT, times=2)
    learner = make_test_learner(sender, ended, Checkpointer(tmp_path, every_epochs=1), n_batches=4)
    with pytest.raises(KeyboardInterrupt, match=rf'^Training stopped at once by a second signal \(SIGINT\), without saving a checkpoint; fit\(5, resume="latest"\) continues from the newest one in {tmp_path}.$'):
        learner.fit(5)
    assert ended.ended == 1
    assert names(tmp_path) == ["checkpoint-000001-epoch1-batch0"]  # the routine one of epoch 1 only


def test_a_second_sigterm_stops_at_once_without_saving(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ended = FitEndLog()
    sender = send_at(BatchEnd, TrainingPhase, 2, signal.SIGTERM, times=2)
    learner = make_test_learner(sender, ended, Checkpointer(tmp_path), n_batches=4)
    with caplog.at_level(logging.WARNING):
        stop(learner, signal.SIGTERM)
    assert ended.ended == 1 and names(tmp_path) == []
    assert "Training stopped at once by a second signal (SIGTERM), without saving a checkpoint" in caplog.text


def test_a_signal_during_a_routine_save_stops_right_after_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    class SignalsWhenSaved(Callback):
        def state_dict(self) -> dict[str, Any]:  # called while the checkpoint is captured
            os.kill(os.getpid(), signal.SIGTERM)
            return {}

    learner = make_test_learner(SignalsWhenSaved(), Checkpointer(tmp_path, every_epochs=None, every_steps=3), n_batches=4)
    with caplog.at_level(logging.WARNING):
        stop(learner, signal.SIGTERM)
    assert names(tmp_path) == ["checkpoint-000001-epoch0-batch3"]  # no second save for the signal
    assert f"checkpoint saved to {list_checkpoints(tmp_path)[0]}" in caplog.text


@pytest.mark.parametrize(("signum", "name", "second"), SIGNALS)
def test_a_fit_cancelled_before_the_save_says_no_checkpoint_was_saved(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, signum: int, name: str, second: str
) -> None:
    def signal_then_cancel(event: Event, phase: Phase, learner: Any) -> None:
        os.kill(os.getpid(), signum)
        raise CancelFit("enough")  # before the Checkpointer, which runs last, saves

    learner = make_test_learner(LambdaCallback(signal_then_cancel, BatchEnd, phase=TrainingPhase), Checkpointer(tmp_path), n_batches=2)
    with caplog.at_level(logging.WARNING):
        raised = stop(learner, signum)
    stopped = (
        f"Training stopped by {name}: no checkpoint was saved, as LambdaCallback.signal_then_cancel cancelled the fit first "
        f'(enough); fit(5, resume="latest") continues from the newest checkpoint in {tmp_path} (from the '
        f"beginning if it has none)."
    )
    assert (str(raised) if signum == signal.SIGINT else caplog.records[-1].getMessage()) == stopped
    assert names(tmp_path) == []


def test_a_signal_after_the_last_save_says_every_epoch_ran(tmp_path: Path) -> None:
    # Reachable only in the instant between the last epoch's save and the end of the loop,
    # so the outcome is checked on its own.
    run = SimpleNamespace(n_epochs=1, validates=True, interrupted=None, saved=tmp_path / "last.pt", stage="after", saves=True, folder=tmp_path)
    interrupts = Interrupts(run)
    interrupts.close()
    assert interrupts.outcome(None) is None
    run.interrupted = "SIGINT"
    with pytest.raises(KeyboardInterrupt, match=rf"^Training stopped by SIGINT: it arrived as the fit ended, after every epoch had run; the last checkpoint is {tmp_path / 'last.pt'}.$"):
        interrupts.outcome(None)
    run.saved = None  # a fit that saved nothing (its checkpoints were not due yet)
    with pytest.raises(KeyboardInterrupt, match=r"^Training stopped by SIGINT: it arrived as the fit ended, after every epoch had run.$"):
        interrupts.outcome(None)


def test_sigterm_without_a_checkpointer_runs_fit_end_then_exits(caplog: pytest.LogCaptureFixture) -> None:
    ended = FitEndLog()
    learner = make_test_learner(send_at(BatchEnd, TrainingPhase, 1, signal.SIGTERM), ended, n_batches=4)
    with caplog.at_level(logging.WARNING):
        stop(learner, signal.SIGTERM, n_epochs=2)
    assert ended.ended == 1
    assert "Training stopped by SIGTERM; FitEnd cleanup runs, no checkpoint is saved." in caplog.text
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


@default_sigint
def test_ctrl_c_without_a_checkpointer_is_pythons_own() -> None:
    ended = FitEndLog()
    learner = make_test_learner(send_at(BatchEnd, TrainingPhase, 1, signal.SIGINT), ended, n_batches=4)
    with pytest.raises(KeyboardInterrupt) as info:
        learner.fit(2)
    assert str(info.value) == "" and ended.ended == 1


def test_a_users_own_sigterm_handler_is_left_alone(tmp_path: Path) -> None:
    received: list[int] = []
    handler: Callable[[int, Any], None] = lambda signum, frame: received.append(signum)  # noqa: E731
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        learner = make_test_learner(send_at(BatchEnd, TrainingPhase, 1, signal.SIGTERM), Checkpointer(tmp_path), n_batches=2)
        assert learner.fit(1).stopped is None
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert received == [signal.SIGTERM]
