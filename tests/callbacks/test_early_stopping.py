"""EarlyStopping: patience, min_delta, min and max, a readable reason, and a build-time check
of the monitored key."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from cadence import WRITE, Callback, CancelFit, Metrics, MissingStateError, on
from cadence.callbacks.checkpointer import Checkpointer
from cadence.callbacks.early_stopping import EarlyStopping
from cadence.callbacks.metrics import MetricSpec, MetricValues
from cadence.callbacks.nan import StopOnNaNLoss
from cadence.checkpointing.files import list_checkpoints
from cadence.events import EpochEnd
from cadence.phases import Phase, ValidationPhase
from cadence.testing import make_test_learner, regression_batches


class Scripted(Callback):
    """Writes the given values of ``valid/score`` (and ``train/score``), one per epoch."""

    state_access = {"cbstate.metrics": WRITE}

    def __init__(self, values: list[float]) -> None:
        self.values = list(values)

    def init(self, learner: Any) -> None:
        learner.cbstate.metrics = MetricValues(keys={"train/score", "valid/score"})

    @on(EpochEnd)
    def add(self, event: Any, phase: Phase, learner: Any) -> None:
        epochs = learner.cbstate.metrics.epochs
        values = epochs.setdefault(f"{phase.name}/score", [])
        values.append(self.values[len(values)])


def run(values: list[float], **kwargs: Any) -> tuple[CancelFit | None, int]:
    """Fit until the scripted values run out; return the result and the epochs run."""
    stopper = EarlyStopping(**{"monitor": "valid/score", **kwargs})
    learner = make_test_learner(stopper, Scripted(values), n_batches=1)
    result = learner.fit(len(values))
    return result, len(learner.cbstate.metrics.epochs["valid/score"])


def test_stops_after_patience_epochs_without_improvement() -> None:
    result, epochs = run([5, 4, 4.5, 4.2, 4.1, 1, 1], patience=3)
    assert result is not None
    assert result.reason == "EarlyStopping: valid/score did not improve by min_delta=0.0 for 3 epochs (best 4 at epoch 2)."
    assert epochs == 5
    assert result.origin == "EarlyStopping.training_begin"


def test_an_improvement_resets_the_patience() -> None:
    result, epochs = run([5, 4, 4.5, 3, 3.5, 3.2, 2], patience=2)
    assert result is not None and "for 2 epochs (best 3 at epoch 4)" in result.reason
    assert epochs == 6


def test_patience_zero_stops_at_the_first_epoch_without_improvement() -> None:
    result, epochs = run([5, 4, 4, 3], patience=0)
    assert result is not None and "for 1 epoch (best 4 at epoch 2)" in result.reason
    assert epochs == 3


def test_min_delta_is_the_least_improvement() -> None:
    result, epochs = run([1.0, 0.95, 0.92, 0.5], patience=2, min_delta=0.1)
    assert result is not None
    assert result.reason == "EarlyStopping: valid/score did not improve by min_delta=0.1 for 2 epochs (best 1 at epoch 1)."
    assert epochs == 3


def test_mode_max() -> None:
    result, epochs = run([0.5, 0.7, 0.6, 0.65, 0.9], mode="max", patience=2)
    assert result is not None and "(best 0.7 at epoch 2)" in result.reason
    assert epochs == 4


def test_nan_counts_as_no_improvement() -> None:
    result, _ = run([float("nan"), float("nan"), 1.0], patience=2)
    assert result is not None and "(best none (no value was a number))" in result.reason
    result, _ = run([1.0, float("nan"), float("nan"), 0.5], patience=2)
    assert result is not None and "(best 1 at epoch 1)" in result.reason


def test_a_stop_decided_in_the_last_epoch_lets_fit_finish() -> None:
    result, epochs = run([5, 6], patience=1)
    assert result is None and epochs == 2


def test_monitoring_training_values_without_validation() -> None:
    learner = make_test_learner(EarlyStopping("train/score", patience=1), Scripted([3, 2, 2.5, 1]), n_batches=1)
    result = learner.fit(4, data=(regression_batches(1), None))
    assert result is not None and "train/score did not improve" in result.reason
    assert learner.cbstate.metrics.epochs == {"train/score": [3, 2, 2.5]}


def test_a_training_monitor_still_lets_validation_run() -> None:
    learner = make_test_learner(EarlyStopping("train/score", patience=0), Scripted([3, 4, 5]), n_batches=1)
    assert learner.fit(3) is not None
    assert learner.cbstate.metrics.epochs == {"train/score": [3, 4], "valid/score": [3, 4]}


def test_an_unknown_monitor_is_an_error_when_the_learner_is_built() -> None:
    with pytest.raises(
        MissingStateError,
        match=(
            r"EarlyStopping monitors 'valid/acuracy', but no callback produces it; cbstate.metrics will have "
            r".*valid/accuracy, valid/loss.*\nDid you mean EarlyStopping\(monitor=\"valid/accuracy\"\)\? "
            r"Monitor one of those keys, or add the metric to Metrics, e\.g\. "
            r"Metrics\(MetricSpec\(my_metric, phases=\"valid\"\)\)\."
        ),
    ):
        metrics = Metrics(MetricSpec(lambda y_pred, y: y_pred.mean(), name="accuracy"))
        make_test_learner(EarlyStopping("valid/acuracy"), metrics)


def test_an_unknown_monitor_added_later_leaves_the_learner_unchanged() -> None:
    learner = make_test_learner(Metrics())
    with pytest.raises(MissingStateError, match=r"monitors 'valid/f1'"):
        learner.add_callback(EarlyStopping("valid/f1"))
    assert [type(cb) for cb in learner.callbacks] == [Metrics]


def test_without_metrics_the_build_suggests_adding_metrics() -> None:
    with pytest.raises(MissingStateError, match=r"EarlyStopping reads cbstate.metrics, but no callback writes it.\nAdd Metrics\(\)"):
        make_test_learner(EarlyStopping())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"monitor": "loss"}, r"EarlyStopping\(monitor='loss'\): keys are \"<phase>/<metric>\", e\.g\. monitor=\"valid/loss\"\."),
        ({"mode": "lowest"}, r"EarlyStopping\(mode='lowest'\): use \"min\" \(lower is better\) or \"max\"\."),
        ({"patience": -1}, r"EarlyStopping\(patience=-1\): use an int >= 0\."),
        ({"min_delta": -0.1}, r"EarlyStopping\(min_delta=-0\.1\): use a number >= 0\."),
    ],
)
def test_arguments_are_checked_at_construction(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EarlyStopping(**kwargs)


def test_state_dict_round_trip_resumes_the_count() -> None:
    stopper = EarlyStopping("valid/score", patience=2)
    make_test_learner(stopper, Scripted([5, 4, 4.5]), n_batches=1).fit(3)
    state = stopper.state_dict()
    assert state == {"best": 4, "best_epoch": 2, "wait": 1, "seen": 3, "stop": None}
    resumed = EarlyStopping("valid/score", patience=2)
    resumed.load_state_dict(state)
    scripted = Scripted([5, 4, 4.5, 4.6, 1])
    learner = make_test_learner(resumed, scripted, n_batches=1)
    learner.cbstate.metrics.epochs["valid/score"] = [5, 4, 4.5]
    learner.cbstate.metrics.epochs["train/score"] = [5, 4, 4.5]
    result = learner.fit(2)
    assert result is not None and "for 2 epochs (best 4 at epoch 2)" in result.reason
    assert learner.cbstate.metrics.epochs["valid/score"] == [5, 4, 4.5, 4.6]


def test_state_dict_holds_a_pending_stop() -> None:
    stopper = EarlyStopping("valid/score", patience=1)
    make_test_learner(stopper, Scripted([5, 6]), n_batches=1).fit(2)  # decided in the last epoch
    state = stopper.state_dict()
    assert state["stop"] == "EarlyStopping: valid/score did not improve by min_delta=0.0 for 1 epoch (best 5 at epoch 1)."
    resumed = EarlyStopping("valid/score", patience=1)
    resumed.load_state_dict({k: v for k, v in state.items() if k != "stop"})  # a checkpoint from before "stop"
    assert resumed.state_dict()["stop"] is None


def test_a_resumed_run_stops_where_the_uninterrupted_run_stopped(tmp_path: Path) -> None:
    def build(folder: Path) -> Any:
        return make_test_learner(EarlyStopping(patience=2, min_delta=1e-3), Metrics(), Checkpointer(folder, keep_last=50))

    reference = build(tmp_path)
    expected = reference.fit(50)
    assert expected is not None and len(reference.cbstate.metrics.epochs["valid/loss"]) == 6
    checkpoints = list_checkpoints(tmp_path)
    assert len(checkpoints) == 6  # one per epoch; the last one holds the pending stop
    for path in checkpoints:
        resumed = build(tmp_path / "again" / path.stem)  # a folder belongs to one run
        result = resumed.fit(50, resume=path)
        assert result is not None and result.reason == expected.reason, path.name
        assert resumed.cbstate.metrics.epochs == reference.cbstate.metrics.epochs, path.name
    latest = build(tmp_path)
    result = latest.fit(50, resume="latest")  # the repro: it ran a 7th epoch
    assert result is not None and result.reason == expected.reason
    assert len(latest.cbstate.metrics.epochs["valid/loss"]) == 6


def test_a_fit_without_the_monitored_phase_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    learner = make_test_learner(EarlyStopping(), Metrics())
    with caplog.at_level(logging.WARNING, logger="cadence.callbacks.early_stopping"):
        learner.fit(1, data=(regression_batches(2), None))
    assert "EarlyStopping saw no new value of valid/loss during this fit; is there data for the valid phase?" in caplog.text


def test_no_warning_when_fit_stops_before_any_epoch_ends(caplog: pytest.LogCaptureFixture) -> None:
    learner = make_test_learner(EarlyStopping(), Metrics(), lr=1e20)
    learner.add_callback(StopOnNaNLoss())
    with caplog.at_level(logging.WARNING, logger="cadence.callbacks.early_stopping"):
        assert learner.fit(1) is not None
        learner.fit(0)
    assert caplog.text == ""


def test_every_callback_sees_the_last_epoch_end() -> None:
    ends: list[int] = []

    class Last(Callback):
        @on(EpochEnd, phase=ValidationPhase)
        def end(self, event: Any, phase: Any, learner: Any) -> None:
            ends.append(1)

    for callbacks in ([EarlyStopping(patience=0), Last()], [Last(), EarlyStopping(patience=0)]):
        ends.clear()
        learner = make_test_learner(*callbacks, Metrics(), lr=1.5)  # oscillates: valid/loss goes up at once
        result = learner.fit(10)
        assert result is not None
        assert len(ends) == len(learner.cbstate.metrics.epochs["valid/loss"]) == 2
