"""What fit returns: Keras' History (this fit's epoch metrics per key) and how it stopped."""

from __future__ import annotations

from pathlib import Path

from typing import Any

from cadence import CancelFit, Callback, Checkpointer, EarlyStopping, FitResult, Metrics, Recorder, on
from cadence.events import Event, FitBegin
from cadence.phases import Phase
from cadence.checkpointing.files import list_checkpoints
from cadence.testing import make_test_learner


def test_the_history_holds_this_fits_epoch_values_per_key() -> None:
    learner = make_test_learner(Recorder(), Metrics(), n_batches=4)
    first = learner.fit(2)
    epochs = learner.cbstate.metrics.epochs
    assert first == FitResult({"train/loss": epochs["train/loss"], "valid/loss": epochs["valid/loss"]})
    assert first.stopped is None and first.reason is None
    second = learner.fit(3)  # like Keras: a second fit's History has only its own epochs
    assert second.history == {key: values[2:] for key, values in epochs.items()}
    assert len(second.history["valid/loss"]) == 3


def test_a_stopped_fit_says_why() -> None:
    learner = make_test_learner(EarlyStopping(patience=1, min_delta=1.0), Metrics())
    result = learner.fit(10)
    assert isinstance(result.stopped, CancelFit) and result.stopped.origin == "EarlyStopping.training_begin"
    assert result.reason == result.stopped.reason and result.reason.startswith("EarlyStopping: valid/loss")
    assert len(result.history["valid/loss"]) == 2


class Budget(Callback):
    """Allows one fit: the next ones stop at FitBegin."""

    def __init__(self) -> None:
        self.fits = 0

    @on(FitBegin)
    def check(self, event: Event, phase: Phase, learner: Any) -> None:
        self.fits += 1
        if self.fits > 1:
            raise CancelFit("budget used up")

    def reset(self) -> None:
        pass  # the count is the budget: it spans fits


def test_a_fit_stopped_at_fit_begin_has_no_epochs_of_its_own() -> None:
    learner = make_test_learner(Budget(), Recorder(), Metrics())
    assert len(learner.fit(3).history["train/loss"]) == 3
    second = learner.fit(2)
    assert second.reason == "budget used up" and second.history == {}  # not the first fit's epochs
    assert repr(second) == "FitResult(keys=[], epochs=0, stopped='budget used up')"


def test_without_metrics_the_history_is_empty() -> None:
    assert make_test_learner(Recorder()).fit(1) == FitResult()


def test_a_resumed_fit_has_the_whole_runs_history(tmp_path: Path) -> None:
    full = make_test_learner(Metrics(), Checkpointer(tmp_path, keep_last=10), n_batches=2).fit(3)
    path = list_checkpoints(tmp_path)[0]  # after epoch 1
    resumed = make_test_learner(Metrics(), Checkpointer(tmp_path / "again"), n_batches=2).fit(3, resume=path)
    assert resumed.history == full.history
