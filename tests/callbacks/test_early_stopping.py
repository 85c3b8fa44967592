"""EarlyStopping: patience, min_delta, min and max, Keras' baseline and start_from_epoch, the
best weights back, a readable reason, a check of the monitored key, and what a new fit resets."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from cadence import READ, WRITE, Callback, CancelFit, CheckpointError, ConflictError, Metrics, MissingStateError, on
from cadence.callbacks.checkpointer import Checkpointer
from cadence.callbacks.early_stopping import EarlyStopping
from cadence.callbacks.metrics import MetricSpec
from cadence.callbacks.nan import StopOnNaNLoss
from cadence.checkpointing.files import list_checkpoints
from cadence.events import EpochEnd
from cadence.phases import Phase, ValidationPhase
from cadence.testing import make_test_learner, regression_batches
from helpers import ScriptedMetrics


def run(values: list[float], **kwargs: Any) -> tuple[CancelFit | None, int]:
    """Fit until the scripted values run out; return the result and the epochs run."""
    stopper = EarlyStopping(**{"monitor": "valid/score", **kwargs})
    learner = make_test_learner(stopper, ScriptedMetrics(values), n_batches=1)
    result = learner.fit(len(values)).stopped
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
    learner = make_test_learner(EarlyStopping("train/score", patience=1), ScriptedMetrics([3, 2, 2.5, 1]), n_batches=1)
    result = learner.fit(4, data=(regression_batches(1), None)).stopped
    assert result is not None and "train/score did not improve" in result.reason
    assert learner.cbstate.metrics.epochs == {"train/score": [3, 2, 2.5]}


def test_a_training_monitor_still_lets_validation_run() -> None:
    learner = make_test_learner(EarlyStopping("train/score", patience=0), ScriptedMetrics([3, 4, 5]), n_batches=1)
    assert learner.fit(3).stopped is not None
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
    with pytest.raises(MissingStateError, match=r"EarlyStopping reads cbstate.metrics.epochs, but no callback writes it.\nAdd Metrics\(\)"):
        make_test_learner(EarlyStopping())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"monitor": "loss"}, r"EarlyStopping\(monitor='loss'\): keys are \"<phase>/<metric>\", e\.g\. EarlyStopping\(monitor=\"valid/loss\"\)\."),
        ({"mode": "lowest"}, r"EarlyStopping\(mode='lowest'\): expected \"min\" \(lower is better, as for a loss\) or \"max\" \(higher is better, as for accuracy\); write e\.g\. EarlyStopping\(mode=\"min\"\)\."),
        ({"mode": "MAX"}, r"EarlyStopping\(mode='MAX'\): expected .*; write e\.g\. EarlyStopping\(mode=\"max\"\)\."),
        ({"patience": -1}, r"EarlyStopping\(patience=-1\): use an int >= 0, e\.g\. patience=3\."),
        ({"start_from_epoch": 1.5}, r"EarlyStopping\(start_from_epoch=1\.5\): use an int >= 0, e\.g\. start_from_epoch=3\."),
        ({"min_delta": -0.1}, r"EarlyStopping\(min_delta=-0\.1\): use a number >= 0\."),
        ({"baseline": float("nan")}, r"EarlyStopping\(baseline=nan\): use a finite number, the value to beat, e\.g\. baseline=0\.5; or None for no baseline\."),
    ],
)
def test_arguments_are_checked_at_construction(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EarlyStopping(**kwargs)


def test_state_dict_round_trip_resumes_the_count() -> None:
    stopper = EarlyStopping("valid/score", patience=2)
    make_test_learner(stopper, ScriptedMetrics([5, 4, 4.5]), n_batches=1).fit(3)
    state = stopper.state_dict()
    assert state == {"best": 4, "best_epoch": 2, "wait": 1, "seen": 3, "judged": 3, "stop": None, "best_weights": None}
    resumed = EarlyStopping("valid/score", patience=2)
    resumed.load_state_dict(state)
    scripted = ScriptedMetrics([5, 4, 4.5, 4.6, 1])
    learner = make_test_learner(resumed, scripted, n_batches=1)
    learner.cbstate.metrics.epochs["valid/score"] = [5, 4, 4.5]
    learner.cbstate.metrics.epochs["train/score"] = [5, 4, 4.5]
    result = learner.fit(2).stopped
    assert result is not None and "for 2 epochs (best 4 at epoch 2)" in result.reason
    assert learner.cbstate.metrics.epochs["valid/score"] == [5, 4, 4.5, 4.6]


def test_state_dict_holds_a_pending_stop() -> None:
    stopper = EarlyStopping("valid/score", patience=1)
    make_test_learner(stopper, ScriptedMetrics([5, 6]), n_batches=1).fit(2)  # decided in the last epoch
    state = stopper.state_dict()
    assert state["stop"] == "EarlyStopping: valid/score did not improve by min_delta=0.0 for 1 epoch (best 5 at epoch 1)."
    resumed = EarlyStopping("valid/score", patience=1)
    resumed.load_state_dict({k: v for k, v in state.items() if k != "stop"})  # a checkpoint from before "stop"
    assert resumed.state_dict()["stop"] is None


def test_a_resumed_run_stops_where_the_uninterrupted_run_stopped(tmp_path: Path) -> None:
    def build(folder: Path) -> Any:
        return make_test_learner(EarlyStopping(patience=2, min_delta=1e-3), Metrics(), Checkpointer(folder, keep_last=50))

    reference = build(tmp_path)
    expected = reference.fit(50).stopped
    assert expected is not None and len(reference.cbstate.metrics.epochs["valid/loss"]) == 6
    checkpoints = list_checkpoints(tmp_path)
    assert len(checkpoints) == 6  # one per epoch; the last one holds the pending stop
    for path in checkpoints:
        resumed = build(tmp_path / "again" / path.stem)  # a folder belongs to one run
        result = resumed.fit(50, resume=path).stopped
        assert result is not None and result.reason == expected.reason, path.name
        assert resumed.cbstate.metrics.epochs == reference.cbstate.metrics.epochs, path.name
    latest = build(tmp_path)
    result = latest.fit(50, resume="latest").stopped  # the repro: it ran a 7th epoch
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
        assert learner.fit(1).stopped is not None
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
        result = learner.fit(10).stopped
        assert result is not None
        assert len(ends) == len(learner.cbstate.metrics.epochs["valid/loss"]) == 2


# ---- Keras' baseline and start_from_epoch, with the epochs its documentation implies ---------------


def test_no_epoch_beating_the_baseline_stops_after_patience_epochs() -> None:
    # Keras: "If no epoch improves on baseline, training will run for patience epochs and
    # restore weights from the best epoch in that set" (it improves on itself throughout).
    result, epochs = run([0.9, 0.8, 0.7, 0.6, 0.4], patience=3, baseline=0.5)
    assert epochs == 3
    assert result is not None
    assert result.reason == "EarlyStopping: valid/score did not beat baseline=0.5 in 3 epochs (best 0.7 at epoch 3)."


def test_an_epoch_beating_the_baseline_restarts_the_patience() -> None:
    result, epochs = run([0.9, 0.45, 0.5, 0.6, 0.7, 0.2], patience=2, baseline=0.5)
    assert epochs == 4  # epoch 2 beat it; 3 and 4 did not improve on 0.45
    assert result is not None and "did not improve by min_delta=0.0 for 2 epochs (best 0.45 at epoch 2)" in result.reason


def test_the_baseline_in_max_mode_and_with_min_delta() -> None:
    result, epochs = run([0.5, 0.7, 0.8, 0.9, 0.95], mode="max", patience=2, baseline=0.6, min_delta=0.05)
    # Epoch 1 does not beat 0.6 + 0.05 (wait 1); epochs 2 to 4 improve on the best and the baseline
    # by more than 0.05 (wait 0); epoch 5 does not improve on 0.9 by more than 0.05 (wait 1).
    assert result is None and epochs == 5
    result, epochs = run([0.5, 0.62, 0.64, 0.9], mode="max", patience=2, baseline=0.6, min_delta=0.05)
    # 0.62 improves on 0.5 by more than 0.05 but not on the baseline by more than 0.05: wait 2 -> stop.
    assert epochs == 2 and result is not None and "did not beat baseline=0.6 in 2 epochs (best 0.62 at epoch 2)" in result.reason


def test_start_from_epoch_ignores_the_first_epochs() -> None:
    # Keras: "Number of epochs to wait before starting to monitor improvement": epochs 1 and 2
    # are not judged, so the worse values of epochs 3 and 4 do not count against epoch 1's.
    result, epochs = run([1, 2, 3, 2.5, 2.6, 2.7], patience=1, start_from_epoch=2)
    assert epochs == 5
    assert result is not None and "(best 2.5 at epoch 4)" in result.reason
    result, epochs = run([1, 2, 3, 2.5, 2.6, 2.7], patience=1)
    assert epochs == 2


# ---- the best weights back ------------------------------------------------------------------------


class WeightLog(Callback):
    """The model's weights at every validation EpochEnd."""

    state_access = {"model": READ}

    def __init__(self) -> None:
        self.weights: list[dict[str, torch.Tensor]] = []

    @on(EpochEnd, phase=ValidationPhase)
    def keep(self, event: Any, phase: Phase, learner: Any) -> None:
        self.weights.append({k: v.clone() for k, v in learner.model.state_dict().items()})


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("values", "best", "stops"),
    [
        ([5, 3, 1, 2, 4, 6, 0], 2, True),  # stopped by patience=3 after epoch 6
        ([5, 1, 2, 3], 1, False),  # all epochs run: restored at the end of fit too
    ],
)
def test_restored_weights_are_those_of_the_best_epoch(values: list[float], best: int, stops: bool) -> None:
    stopper, log = EarlyStopping("valid/score", patience=3, restore_best_weights=True), WeightLog()
    learner = make_test_learner(stopper, log, ScriptedMetrics(values), n_batches=2)
    result = learner.fit(len(values)).stopped
    assert (result is not None) == stops
    assert len(log.weights) == (6 if stops else 4)
    assert same_weights(learner.model.state_dict(), log.weights[best])
    assert not same_weights(log.weights[-1], log.weights[best])
    if stops:
        assert result is not None and result.reason.endswith("(best 1 at epoch 3; its weights are restored at the end of fit).")


def test_best_weights_stay_on_the_cpu_in_the_same_buffers() -> None:
    stopper = EarlyStopping("valid/score", patience=5, restore_best_weights=True)
    seen: list[tuple[int, torch.Tensor]] = []

    class Peek(Callback):
        state_access = {"model": READ}
        run_after = (EarlyStopping,)

        @on(EpochEnd, phase=ValidationPhase)
        def peek(self, event: Any, phase: Phase, learner: Any) -> None:
            kept = stopper.best_weights
            assert kept is not None and set(kept) == {"weight"} and kept["weight"].device.type == "cpu"
            assert torch.equal(kept["weight"], learner.model.weight)  # every epoch improves
            seen.append((kept["weight"].data_ptr(), learner.model.weight.data_ptr()))

    learner = make_test_learner(stopper, Peek(), ScriptedMetrics([5, 4, 3]), n_batches=2)
    learner.fit(3)
    assert len(seen) == 3 and len({kept for kept, _ in seen}) == 1  # copied into one buffer
    assert all(kept != weight for kept, weight in seen)  # a copy, not the parameter


def test_best_weights_go_through_state_dict() -> None:
    stopper = EarlyStopping("valid/score", patience=5, restore_best_weights=True)
    learner = make_test_learner(stopper, ScriptedMetrics([5, 1, 3]), n_batches=2)
    learner.fit(3)
    state = stopper.state_dict()
    resumed = EarlyStopping("valid/score", patience=5, restore_best_weights=True)
    resumed.load_state_dict(state)
    assert resumed.best_weights is not None and same_weights(resumed.best_weights, learner.model.state_dict())


def test_restoring_declares_the_model_written() -> None:
    # The epoch values only: replicated across the ranks of a distributed fit (cadence.distributed.agreement).
    assert EarlyStopping().state_access == {"cbstate.metrics.epochs": READ}
    assert EarlyStopping(restore_best_weights=True).state_access == {"cbstate.metrics.epochs": READ, "model": WRITE}
    with pytest.raises(TypeError, match=r"EarlyStopping\(restore_best_weights=\.\.\.\) is True or False; got 'yes'\."):
        EarlyStopping(restore_best_weights="yes")  # type: ignore[arg-type]


def test_restoring_combines_with_the_other_model_writers() -> None:
    from cadence import GradientAccumulation, GradientClipping, MixedPrecision, ToDevice

    stopper, log = EarlyStopping("valid/score", patience=5, restore_best_weights=True), WeightLog()
    others = [GradientAccumulation(2), GradientClipping(1.0), MixedPrecision(torch.bfloat16), ToDevice("cpu")]
    learner = make_test_learner(stopper, *others, log, ScriptedMetrics([5, 1, 3, 4]), n_batches=4)
    learner.fit(4)
    assert same_weights(learner.model.state_dict(), log.weights[1])  # the best epoch's, the second
    assert not same_weights(log.weights[-1], log.weights[1])
    with pytest.raises(ConflictError, match=r"EarlyStopping#1 and EarlyStopping#2 cannot be used together: both write model"):
        make_test_learner(EarlyStopping(restore_best_weights=True), EarlyStopping("train/loss", restore_best_weights=True), Metrics())


def saved_run(folder: Path, restore: bool) -> Path:
    """A run of 4 epochs (the best the second) checkpointed at every epoch; the checkpoint after the third."""
    stopper = EarlyStopping("valid/score", patience=5, restore_best_weights=restore)
    make_test_learner(stopper, ScriptedMetrics([5, 1, 3, 4]), Checkpointer(folder, keep_last=10), n_batches=2).fit(4)
    return list_checkpoints(folder)[2]


def test_a_run_saved_with_best_weights_resumes_without_them(tmp_path: Path) -> None:
    path = saved_run(tmp_path / "run", restore=True)
    stopper, log = EarlyStopping("valid/score", patience=5), WeightLog()
    learner = make_test_learner(stopper, log, ScriptedMetrics([5, 1, 3, 4]), Checkpointer(tmp_path / "again"), n_batches=2)
    learner.fit(4, resume=path)  # it raised ProtectedAccessError at FitEnd: the model is not declared
    assert stopper.best_weights is None and stopper.best == 1
    assert same_weights(learner.model.state_dict(), log.weights[-1])  # nothing restored, as asked


def test_a_run_saved_without_best_weights_cannot_restore_them(tmp_path: Path) -> None:
    path = saved_run(tmp_path / "run", restore=False)
    log = WeightLog()
    stopper = EarlyStopping("valid/score", patience=5, restore_best_weights=True)
    learner = make_test_learner(stopper, log, ScriptedMetrics([5, 1, 3, 4]), Checkpointer(tmp_path / "again"), n_batches=2)
    with pytest.raises(
        CheckpointError,
        match=(
            r"EarlyStopping\.load_state_dict refuses the state the checkpoint holds for it \(ValueError: "
            r"EarlyStopping\(restore_best_weights=True\) was given a state with a best value \(valid/score 1 at "
            r"epoch 2\) but not its weights: it was saved without restore_best_weights, so there are no best "
            r"weights to restore at the end of fit\. Resume with EarlyStopping\(restore_best_weights=False\), as "
            r"the run was saved, or start a new run to get the best weights back\.\), tried before anything was "
            r"restored\."
        ),
    ):
        learner.fit(4, resume=path)
    assert log.weights == [] and stopper.best is None  # before any epoch ran, the state untouched
    plain = EarlyStopping("valid/score")
    make_test_learner(plain, ScriptedMetrics([5, 1]), n_batches=1).fit(2)
    with pytest.raises(ValueError, match=r"^EarlyStopping\(restore_best_weights=True\) was given a state with a best value"):
        stopper.load_state_dict(plain.state_dict())  # loaded by hand: the same refusal


# ---- a new fit starts afresh ---------------------------------------------------------------------


def stopped_twice(stopper: EarlyStopping) -> tuple[list[str], list[int], torch.Tensor]:
    learner = make_test_learner(stopper, Metrics(), lr=0.3)
    reasons, epochs = [], []
    for _ in range(2):
        result = learner.fit(50).stopped
        assert result is not None
        reasons.append(result.reason)
        epochs.append(len(learner.cbstate.metrics.epochs["valid/loss"]))
    return reasons, epochs, learner.model.weight.detach().clone()


def test_a_second_fit_judges_afresh() -> None:
    reasons, epochs, weight = stopped_twice(EarlyStopping(patience=2, min_delta=1e-3))
    # As if a new EarlyStopping judged the second fit: it ran more than the one epoch that the
    # first fit's counters allowed.
    learner = make_test_learner(EarlyStopping(patience=2, min_delta=1e-3), Metrics(), lr=0.3)
    learner.fit(50)
    learner.replace_callback(EarlyStopping(patience=2, min_delta=1e-3))
    result = learner.fit(50).stopped
    assert result is not None and reasons[1] == result.reason
    assert epochs[1] == len(learner.cbstate.metrics.epochs["valid/loss"])  # Metrics counts on
    assert epochs[1] - epochs[0] == 3  # the first epoch of the second fit is its best: 1 + patience
    assert torch.equal(weight, learner.model.weight)


def test_a_reused_instance_starts_afresh_in_a_new_learner() -> None:
    stopper = EarlyStopping(patience=2, min_delta=1e-3)
    make_test_learner(stopper, Metrics(), lr=0.3).fit(50)
    assert stopper.best is not None and stopper.wait == 2
    reused = make_test_learner(stopper, Metrics(), lr=0.3)
    fresh = make_test_learner(EarlyStopping(patience=2, min_delta=1e-3), Metrics(), lr=0.3)
    got, expected = reused.fit(50), fresh.fit(50)
    assert got is not None and expected is not None and got.reason == expected.reason
    assert reused.cbstate.metrics.epochs == fresh.cbstate.metrics.epochs


def test_a_resumed_fit_of_the_same_learner_restores_over_the_reset(tmp_path: Path) -> None:
    learner = make_test_learner(EarlyStopping(patience=2, min_delta=1e-3), Metrics(), Checkpointer(tmp_path, keep_last=50))
    expected = learner.fit(50).stopped
    assert expected is not None
    path = list_checkpoints(tmp_path)[2]  # after epoch 3 of 6
    # It saves nothing: a folder belongs to one run, and the resumed one is another.
    again = make_test_learner(EarlyStopping(patience=2, min_delta=1e-3), Metrics(), Checkpointer(tmp_path / "again", every_epochs=None))
    again.fit(2)  # a fit first: the resume must not go on from its state
    result = again.fit(50, resume=path).stopped
    assert result is not None and result.reason == expected.reason
    assert again.cbstate.metrics.epochs == learner.cbstate.metrics.epochs


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_best_weights_of_a_model_on_the_gpu_are_kept_on_the_cpu_and_restored_there() -> None:
    from cadence import ToDevice

    stopper, log = EarlyStopping("valid/score", patience=3, restore_best_weights=True), WeightLog()
    learner = make_test_learner(stopper, log, ToDevice("cuda"), ScriptedMetrics([5, 1, 2, 3]), n_batches=2)
    learner.fit(4)
    kept = stopper.best_weights
    assert kept is not None and kept["weight"].device.type == "cpu"
    assert learner.model.weight.device.type == "cuda"
    assert same_weights({k: v.cpu() for k, v in learner.model.state_dict().items()}, {k: v.cpu() for k, v in log.weights[1].items()})


# ---- where Keras 3's code differs from its documentation ------------------------------------------


def test_an_epoch_beating_the_best_but_not_the_baseline_counts_as_waited() -> None:
    # As Keras documents baseline; Keras 3's code returns before its stop check and runs a third epoch.
    _, epochs = run([0.12, 0.34, 0.02, 0.71], mode="max", patience=2, baseline=0.7)
    assert epochs == 2


def test_when_every_value_is_nan_no_weights_are_restored() -> None:
    # Keras 3 keeps the first judged epoch's weights even when its value is NaN.
    nan = float("nan")
    stopper, log = EarlyStopping("valid/score", patience=5, restore_best_weights=True), WeightLog()
    learner = make_test_learner(stopper, log, ScriptedMetrics([nan, nan, nan]), n_batches=2)
    learner.fit(3)
    assert stopper.best_weights is None and stopper.best is None
    assert same_weights(learner.model.state_dict(), log.weights[-1])
