"""validate(), predict() and get_preds(): the same batch callbacks as validation, no second loop,
and no change to training state (issue 13)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from cadence import (
    READ,
    WRITE,
    CadenceError,
    Callback,
    CancelBatch,
    DataWarning,
    DictBatches,
    EarlyStopping,
    EvaluationPhase,
    Learner,
    Metrics,
    MetricSpec,
    MixedPrecision,
    PredictionPhase,
    Recorder,
    ReduceLROnPlateau,
    SignalScopeError,
    ToDevice,
    on,
)
from cadence.events import BatchBegin, BatchEnd, EpochEnd, Event, LossBegin
from cadence.inference import concatenate
from cadence.phases import Phase, TrainingPhase, ValidationPhase
from cadence.testing import make_test_learner, regression_batches

HELD_OUT = regression_batches(4, 8, coefficient=-3.0, seed=7)  # worse than anything seen in training


def mean_error(y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (y_pred - y).abs().mean()


def hand_written_predictions(model: torch.nn.Module, batches: list[Any]) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return torch.cat([model(x) for x, *_ in batches])


# ---- validate ----------------------------------------------------------------------------------


def test_validate_returns_what_fit_computes_on_the_same_data() -> None:
    learner = make_test_learner(Recorder(), Metrics(MetricSpec(mean_error, phases="valid")), n_batches=4)
    learner.fit(2)
    values = learner.validate()  # the validation data, with the weights the last epoch validated
    epochs = learner.cbstate.metrics.epochs
    assert values == {"loss": epochs["valid/loss"][-1], "mean_error": epochs["valid/mean_error"][-1]}
    (x, y), sizes = regression_batches(1, 16, seed=7)[0], (8, 3, 5)
    uneven = list(zip(x.split(sizes), y.split(sizes)))  # the epoch value weighs batches by size
    held_out = learner.validate(uneven)
    with torch.no_grad():
        losses = [float(torch.nn.functional.mse_loss(learner.model(a), b)) for a, b in uneven]
        whole = float(torch.nn.functional.mse_loss(learner.model(x), y))
    assert held_out["loss"] == pytest.approx(sum(l * n for l, n in zip(losses, sizes)) / 16, rel=1e-6)
    assert held_out["loss"] == pytest.approx(whole, rel=1e-5) != pytest.approx(sum(losses) / 3, rel=1e-3)
    assert epochs["eval/loss"] == [values["loss"], held_out["loss"]]


def test_validate_without_metrics_or_data_says_what_to_add() -> None:
    with pytest.raises(CadenceError, match=r"no Metrics callback\. Add one: Learner\(\.\.\., callbacks=\[Metrics\(\)\]\)"):
        make_test_learner(Recorder()).validate()
    learner = make_test_learner(Metrics())
    learner.data = (regression_batches(2), None)
    with pytest.raises(ValueError, match=r"validate\(\) has no data: pass it, validate\(batches\), or give the learner validation data"):
        learner.validate()
    with pytest.warns(DataWarning, match=r"EvaluationPhase ran an epoch without batches"):
        with pytest.raises(CadenceError, match=r"validate\(data\): the data yielded no batches, so there is nothing to report"):
            learner.validate([])


# ---- evaluation leaves training state alone (issue 13) ------------------------------------------


class Plateau(Callback):
    """A plateau schedule as a callback monitoring ``valid/loss``: torch's ReduceLROnPlateau
    stepped with each new value, from any phase's EpochEnd."""

    state_access = {"cbstate.metrics": READ, "optimizer": WRITE}

    def __init__(self) -> None:
        self.scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None
        self.seen = 0

    @on(EpochEnd)
    def step(self, event: Event, phase: Phase, learner: Any) -> None:
        values = learner.cbstate.metrics.epochs.get("valid/loss", [])
        if len(values) > self.seen:
            self.seen = len(values)
            if self.scheduler is None:
                self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(learner.optimizer, patience=0, factor=0.5)
            self.scheduler.step(values[-1])


class ValidationCounter(Callback):
    """A user's validation callback, registered for ValidationPhase."""

    def __init__(self) -> None:
        self.epochs = 0

    @on(EpochEnd, phase=ValidationPhase)
    def count(self, event: Event, phase: Phase, learner: Any) -> None:
        self.epochs += 1


def training_state(learner: Learner) -> dict[str, Any]:
    stopper = learner.get_callback(EarlyStopping)
    counter = learner.get_callback(ValidationCounter)
    assert stopper is not None and isinstance(counter, ValidationCounter)
    plateau = learner.get_callback(Plateau) or learner.get_callback(ReduceLROnPlateau)
    if isinstance(plateau, Plateau):
        plateau_state = plateau.scheduler.state_dict() if plateau.scheduler else None
    else:
        assert plateau is not None
        plateau_state = plateau.state_dict()
    epochs = learner.cbstate.metrics.epochs
    history = learner.cbstate.history
    return {
        "stopper": stopper.state_dict(),
        "plateau": plateau_state,
        "lr": [group["lr"] for group in learner.optimizer.param_groups],
        "optimizer": copy.deepcopy(learner.optimizer.state_dict()),
        "metrics": {k: list(v) for k, v in epochs.items() if not k.startswith("eval/")},
        "history": {kind: copy.copy(history[kind()]) for kind in (TrainingPhase, ValidationPhase)},
        "counter": counter.epochs,
        "weights": learner.model.weight.detach().clone(),
        "rng": torch.get_rng_state(),
    }


def learner_for_issue_13(plateau: type[Callback] = Plateau) -> Learner:
    schedule = Plateau() if plateau is Plateau else ReduceLROnPlateau(patience=0, factor=0.5)
    callbacks = [EarlyStopping(patience=1), schedule, ValidationCounter(), Recorder(), Metrics()]
    return make_test_learner(*callbacks, n_batches=4, lr=0.05)


def held_out_loader() -> DataLoader[Any]:
    """HELD_OUT as a DataLoader: iterating it draws its base seed from torch's RNG."""
    return DataLoader(TensorDataset(torch.cat([x for x, _ in HELD_OUT]), torch.cat([y for _, y in HELD_OUT])), batch_size=8)


@pytest.mark.parametrize(
    ("plateau", "held_out"),
    [(ReduceLROnPlateau, HELD_OUT), (Plateau, HELD_OUT), (ReduceLROnPlateau, held_out_loader())],  # cadence's, one keyed by value only
    ids=["ReduceLROnPlateau", "Plateau", "DataLoader"],
)
def test_evaluating_held_out_data_leaves_every_training_value_unchanged(plateau: type[Callback], held_out: Any) -> None:
    learner, twin = learner_for_issue_13(plateau), learner_for_issue_13(plateau)
    learner.fit(2)
    twin.fit(2)
    before = training_state(learner)
    for _ in range(3):  # three bad evaluations: each would be "no improvement" if it counted
        assert learner.validate(held_out)["loss"] > 1.0
    learner.predict(held_out), learner.get_preds(held_out)  # no RNG draw survives these either
    after = training_state(learner)
    assert after.keys() == before.keys()
    for key in before:
        value, expected = after[key], before[key]
        same = torch.equal(value, expected) if isinstance(value, torch.Tensor) else value == expected
        assert same, key
    assert len(learner.cbstate.metrics.epochs["eval/loss"]) == 3  # its own keys
    # A fit after the evaluations runs exactly as one without them.
    result, expected = learner.fit(6), twin.fit(6)
    assert torch.equal(learner.model.weight, twin.model.weight)
    assert result.history == expected.history and result.reason == expected.reason
    assert training_state(learner)["stopper"] == training_state(twin)["stopper"]


@pytest.mark.parametrize("plateau", [ReduceLROnPlateau, Plateau])
def test_a_validation_epoch_run_directly_is_training_validation(plateau: type[Callback]) -> None:
    # learner.epoch(ValidationPhase(), data) is documented as a validation epoch of training:
    # every validation callback reacts, as in fit.
    learner = learner_for_issue_13(plateau)
    learner.fit(2)
    stopper = learner.get_callback(EarlyStopping)
    assert isinstance(stopper, EarlyStopping) and stopper.wait == 0
    learner.epoch(ValidationPhase(), HELD_OUT)
    assert stopper.wait == 1 and len(learner.cbstate.metrics.epochs["valid/loss"]) == 3
    if plateau is ReduceLROnPlateau:  # it takes the value when training goes on, as in fit
        assert learner.optimizer.param_groups[0]["lr"] == 0.05
        learner.remove_callback(stopper)  # its pending stop would end the next training epoch first
        learner.epoch(TrainingPhase(), regression_batches(1))
    assert learner.optimizer.param_groups[0]["lr"] == 0.025


# ---- predict and get_preds ------------------------------------------------------------------------


def test_predict_equals_a_hand_written_no_grad_loop() -> None:
    learner = make_test_learner(Recorder(), Metrics(), n_batches=4)
    learner.fit(1)
    batches = regression_batches(3, 5, seed=3)
    expected = hand_written_predictions(copy.deepcopy(learner.model), batches)
    learner.model.train()
    predictions = learner.predict(batches)
    assert torch.equal(predictions, expected) and not predictions.requires_grad
    assert learner.model.training  # the mode comes back
    inputs_only = DataLoader(TensorDataset(torch.cat([x for x, _ in batches])), batch_size=5)
    assert torch.equal(learner.predict(inputs_only), expected)
    assert torch.equal(learner.predict([x for x, _ in batches]), expected)
    assert "predict/loss" not in learner.cbstate.metrics.epochs  # predictions are not tracked


def test_get_preds_returns_targets_when_the_data_has_them() -> None:
    learner = make_test_learner(n_batches=3)
    predictions, targets = learner.get_preds()
    batches = learner.data[1]  # type: ignore[index]
    assert torch.equal(predictions, hand_written_predictions(learner.model, batches))
    assert torch.equal(targets, torch.cat([y for _, y in batches]))
    assert learner.get_preds([x for x, _ in batches])[1] is None


class Printer(Callback):
    """DESIGN's example callback, for every phase."""

    state_access = {"batch.loss": READ, "cbstate.history": READ}

    @on(BatchEnd)  # any phase
    def print_loss(self, event: Event, phase: Phase, learner: Any) -> None:
        step = learner.cbstate.history[phase].steps_in_epoch
        print(f"Step {step} loss: {learner.batch.loss:.4f}")


class Losses(Callback):
    state_access = {"batch.loss": READ}

    def __init__(self) -> None:
        self.seen: list[Any] = []

    @on(BatchEnd, phase=PredictionPhase)
    def record(self, event: Event, phase: Phase, learner: Any) -> None:
        self.seen.append(learner.batch.loss)


def test_predictions_of_data_with_targets_have_their_loss(capsys: pytest.CaptureFixture[str]) -> None:
    learner = make_test_learner(Printer(), Recorder(), n_batches=2)
    batches = learner.data[1]  # type: ignore[index]
    learner.get_preds()  # fastai computes the loss in get_preds too
    with torch.no_grad():
        losses = [float(torch.nn.functional.mse_loss(learner.model(x), y)) for x, y in batches]
    assert capsys.readouterr().out.splitlines() == [f"Step {i} loss: {loss:.4f}" for i, loss in enumerate(losses, 1)]
    losses_seen = Losses()
    learner.add_callback(losses_seen)
    learner.remove_callback(Printer)
    learner.predict([x for x, _ in batches])  # inputs alone: nothing to compute a loss from
    learner.predict(batches)
    assert losses_seen.seen[:2] == [None, None] and [float(v) for v in losses_seen.seen[2:]] == losses


class Seen(Callback):
    """Records, per phase, the dtype of y_pred at LossBegin and whether batches began."""

    state_access = {"batch.y_pred": READ}

    def __init__(self) -> None:
        self.dtypes: dict[str, list[torch.dtype]] = {}

    @on(LossBegin)
    def record(self, event: Event, phase: Phase, learner: Any) -> None:
        self.dtypes.setdefault(phase.name, []).append(learner.batch.y_pred.dtype)


def test_the_batch_callbacks_of_validation_apply() -> None:
    seen = Seen()
    learner = make_test_learner(ToDevice("cpu"), MixedPrecision(torch.bfloat16), seen, Metrics(), n_batches=2)
    batches = regression_batches(2, 4, seed=5)
    predictions = learner.predict(batches)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = hand_written_predictions(learner.model, batches)
    assert predictions.dtype == torch.bfloat16 and torch.equal(predictions, expected)
    assert learner.validate(batches)["loss"] > 0
    assert seen.dtypes == {"predict": [torch.bfloat16] * 2, "eval": [torch.bfloat16] * 2}
    assert not torch.is_autocast_enabled("cpu")
    for phase in (PredictionPhase, EvaluationPhase):
        assert "ToDevice.batch_begin" in learner.explain(BatchBegin, phase)


class Rewrite(Callback):
    """Rewrites y_pred at LossBegin of predictions: the rewrite is what is gathered."""

    state_access = {"batch.y_pred": WRITE}

    @on(LossBegin, phase=PredictionPhase)
    def double(self, event: Event, phase: Phase, learner: Any) -> None:
        learner.batch.y_pred = learner.batch.y_pred * 2


class CancelAtEnd(Callback):
    @on(BatchEnd, phase=PredictionPhase)
    def cancel(self, event: Event, phase: Phase, learner: Any) -> None:
        raise CancelBatch


def test_a_loss_begin_rewrite_is_what_predict_returns() -> None:
    learner = make_test_learner(Rewrite(), n_batches=2)
    batches = regression_batches(2, 4)
    assert torch.equal(learner.predict(batches), 2 * hand_written_predictions(learner.model, batches))
    with pytest.raises(SignalScopeError, match=r"CancelBatch raised by CancelAtEnd.cancel at BatchEnd of PredictionPhase"):
        make_test_learner(CancelAtEnd()).predict(batches)


def test_outputs_are_joined_along_the_batch_dimension() -> None:
    pairs = [(torch.zeros(2, 1), {"a": torch.ones(2)}), (torch.ones(1, 1), {"a": torch.zeros(1)})]
    joined = concatenate(pairs)
    assert torch.equal(joined[0], torch.tensor([[0.0], [0.0], [1.0]]))
    assert torch.equal(joined[1]["a"], torch.tensor([1.0, 1.0, 0.0]))
    assert concatenate([torch.tensor(1.0), torch.tensor(2.0)]).tolist() == [1.0, 2.0]
    assert concatenate(["a", "b"]) == ["a", "b"]


class Embedder(torch.nn.Module):
    """Token ids [B, T] to vectors [B, T, 4], as a language model's logits."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(10, 4)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embedding(input_ids)


def test_outputs_of_different_lengths_need_concat_false() -> None:
    generator = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(0, 10, (2, n), generator=generator)} for n in (3, 5)]
    learner = Learner(Embedder(), lambda y_pred, y: y_pred.sum(), adapter=DictBatches("labels"), default_callbacks=False)
    with pytest.raises(
        CadenceError,
        match=r"The predictions of the batches cannot be joined into one tensor: batch 1 gives shape \(2, 3, 4\) and "
        r"batch 2 \(2, 5, 4\), and only the first dimension may differ .* Pass concat=False for a list with one item "
        r"per batch: learner\.predict\(data, concat=False\)",
    ):
        learner.predict(batches)
    predictions = learner.predict(batches, concat=False)
    with torch.no_grad():
        assert [p.shape for p in predictions] == [(2, 3, 4), (2, 5, 4)]
        assert all(torch.equal(p, learner.model(**b)) for p, b in zip(predictions, batches))
    labelled = [{**b, "labels": b["input_ids"]} for b in batches]
    with pytest.raises(CadenceError, match=r"The predictions of the batches"):
        learner.get_preds(labelled)
    predictions, targets = learner.get_preds(labelled, concat=False)
    assert [t.shape for t in targets] == [(2, 3), (2, 5)] and len(predictions) == 2
    with pytest.raises(CadenceError, match=r"The outputs\['logits'\] of the batches cannot be joined"):
        concatenate([{"logits": torch.zeros(1, 2)}, {"logits": torch.zeros(1, 3)}])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_the_gpu_predictions_come_back_to_the_cpu() -> None:
    learner = make_test_learner(ToDevice("cuda"), Metrics(), n_batches=2)
    batches = regression_batches(2, 4)
    predictions = learner.predict(batches)  # before any fit: ToDevice moves the model at EpochBegin
    assert learner.model.weight.device.type == "cuda" and predictions.device.type == "cpu"
    with torch.no_grad():
        expected = torch.cat([learner.model(x.cuda()).cpu() for x, _ in batches])
    assert torch.equal(predictions, expected)
    assert learner.validate(batches)["loss"] > 0
