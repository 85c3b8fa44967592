"""MixedPrecision: autocast in the forward, loss scaling and overflow skipping for float16."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import torch

from cadence import READ, WRITE, CadenceError, CancelBatch, Callback, ConflictError, Learner, on
from cadence.callbacks.device import ToDevice
from cadence.callbacks.precision import MixedPrecision
from cadence.events import BackwardBegin, BackwardEnd, BatchBegin, Event, LossBegin
from cadence.phases import Phase, TrainingPhase, ValidationPhase
from cadence.testing import make_test_learner, regression_batches
from helpers import run_order

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


class Probe(Callback):
    """Records what each event sees: y_pred's dtype, autocast, the loss, the gradients."""

    state_access = {"batch.y_pred": READ, "batch.loss": READ, "model": READ}

    def __init__(self) -> None:
        self.seen: dict[tuple[str, str], list[Any]] = {}

    def _log(self, key: str, phase: Phase, value: Any) -> None:
        self.seen.setdefault((key, phase.name), []).append(value)

    @on(LossBegin)
    def loss_begin(self, event: Event, phase: Phase, learner: Any) -> None:
        self._log("y_pred", phase, learner.batch.y_pred.dtype)
        self._log("autocast", phase, torch.is_autocast_enabled("cpu"))

    @on(BackwardBegin)
    def backward_begin(self, event: Event, phase: Phase, learner: Any) -> None:
        self._log("scaled loss", phase, learner.batch.loss.detach().clone())
        self._log("autocast at backward", phase, torch.is_autocast_enabled("cpu"))

    @on(BackwardEnd)
    def backward_end(self, event: Event, phase: Phase, learner: Any) -> None:
        self._log("loss", phase, learner.batch.loss.clone())
        weight = learner.model.weight
        self._log("grad", phase, None if weight.grad is None else weight.grad.clone())


class AuxiliaryLoss(Callback):
    """A user callback that adds a term to the loss at BackwardBegin, from the prediction."""

    state_access = {"batch.loss": WRITE, "batch.y_pred": READ}

    @on(BackwardBegin, phase=TrainingPhase)
    def add(self, event: Event, phase: Phase, learner: Any) -> None:
        learner.batch.loss = learner.batch.loss + 0.1 * learner.batch.y_pred.float().abs().mean()


class WeightPenalty(Callback):
    """Adds a penalty on the weights at BackwardBegin: it reads the model and rewrites the loss."""

    state_access = {"batch.loss": WRITE, "model": READ}

    @on(BackwardBegin, phase=TrainingPhase)
    def penalise(self, event: Event, phase: Phase, learner: Any) -> None:
        learner.batch.loss = learner.batch.loss + 0.01 * learner.model.weight.square().sum()


class PenaltyAndClipping(WeightPenalty):
    """The penalty and a gradient clipping in one callback, declared per callback: it writes the
    model, so on main it too ran after the scaling at BackwardBegin."""

    state_access = {"batch.loss": WRITE, "model": WRITE}

    @on(BackwardEnd, phase=TrainingPhase)
    def clip(self, event: Event, phase: Phase, learner: Any) -> None:
        torch.nn.utils.clip_grad_norm_(learner.model.parameters(), 1e6)


class NarrowedPenaltyAndClipping(PenaltyAndClipping):
    """The same, each handler declaring what it touches."""

    @on(BackwardBegin, phase=TrainingPhase, access={"batch.loss": WRITE, "model": READ})
    def penalise(self, event: Event, phase: Phase, learner: Any) -> None:
        super().penalise(event, phase, learner)

    @on(BackwardEnd, phase=TrainingPhase, access={"model": WRITE})
    def clip(self, event: Event, phase: Phase, learner: Any) -> None:
        super().clip(event, phase, learner)


class CancelFirstForward(Callback):
    state_access = {"batch.y_pred": READ}

    def __init__(self) -> None:
        self.cancelled = False

    @on(LossBegin, phase=TrainingPhase)
    def maybe_cancel(self, event: Event, phase: Phase, learner: Any) -> None:
        if not self.cancelled:
            self.cancelled = True
            raise CancelBatch


def test_bfloat16_autocast_covers_the_forward_in_training_and_validation() -> None:
    probe = Probe()
    make_test_learner(MixedPrecision(torch.bfloat16), probe, n_batches=2).fit(1)
    for phase in ("train", "valid"):
        assert probe.seen[("y_pred", phase)] == [torch.bfloat16] * 2
        assert probe.seen[("autocast", phase)] == [True] * 2
    assert probe.seen[("autocast at backward", "train")] == [False] * 2  # left before backward
    assert probe.seen[("grad", "train")][0].dtype == torch.float32
    assert not torch.is_autocast_enabled("cpu")


def scaler_state(scale: float) -> dict[str, Any]:
    return {"scale": scale, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000, "_growth_tracker": 0}


def test_float16_scales_the_loss_and_unscales_the_gradients() -> None:
    probe = Probe()
    precision = MixedPrecision(torch.float16)
    precision.load_state_dict({"scaler": scaler_state(1024.0)})  # small enough not to overflow here
    learner = make_test_learner(precision, probe, n_batches=1)
    learner.fit(1)
    assert precision.scaler is not None and precision.scaler.get_scale() == 1024.0
    scaled, loss = probe.seen[("scaled loss", "train")][0], probe.seen[("loss", "train")][0]
    torch.testing.assert_close(scaled, loss * 1024.0)
    # The gradient the optimizer sees is the true one: redo the forward by hand, unscaled.
    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1, bias=False)
    (x, y), = regression_batches(1, 8)
    with torch.autocast("cpu", dtype=torch.float16):
        reference = torch.nn.functional.mse_loss(model(x), y)
    reference.backward()
    torch.testing.assert_close(probe.seen[("grad", "train")][0], model.weight.grad, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(loss, reference.detach(), rtol=1e-3, atol=1e-4)


def test_float16_overflow_skips_the_step_and_backs_off_the_scale() -> None:
    calls = {"n": 0}

    def loss_fn(y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        loss = torch.nn.functional.mse_loss(y_pred, y)
        return loss * float("inf") if calls["n"] == 2 else loss

    model = torch.nn.Linear(1, 1, bias=False)
    precision, probe = MixedPrecision(torch.float16), Probe()
    precision.load_state_dict({"scaler": scaler_state(1024.0)})
    batches = regression_batches(2, 8)
    learner = Learner(model, loss_fn, torch.optim.SGD(model.parameters(), lr=0.1), data=(batches, None), callbacks=[precision, probe], default_callbacks=False)
    learner.step(TrainingPhase(), batches[0])
    before = model.weight.detach().clone()
    learner.step(TrainingPhase(), batches[1])
    assert torch.equal(model.weight, before)
    assert probe.seen[("grad", "train")][0] is not None and probe.seen[("grad", "train")][1] is None
    assert precision.scaler is not None and precision.scaler.get_scale() == 512.0


def test_autocast_is_left_when_a_batch_is_cancelled_or_fit_fails() -> None:
    probe, cancel = Probe(), CancelFirstForward()
    learner = make_test_learner(MixedPrecision(), cancel, probe, n_batches=3)
    learner.fit(1)
    assert cancel.cancelled  # the first batch ended inside autocast; the next ones still work
    assert probe.seen[("y_pred", "train")] == [torch.bfloat16] * 2
    assert probe.seen[("autocast at backward", "train")] == [False] * 2
    assert not torch.is_autocast_enabled("cpu")

    def broken(y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("broken loss")

    learner = make_test_learner(MixedPrecision())
    learner.loss_fn = broken
    with pytest.raises(RuntimeError, match="broken loss"):
        learner.fit(1)
    assert not torch.is_autocast_enabled("cpu")


class FailingModel(torch.nn.Module):
    """A model whose second forward raises, as an out-of-memory error would."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(1, 1)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("out of memory (simulated)")
        return self.linear(x)


ENTRY_POINTS: dict[str, Any] = {
    "fit": lambda learner, data: learner.fit(1),
    "validate": lambda learner, data: learner.validate(data),
    "predict": lambda learner, data: learner.predict(data),
    "get_preds": lambda learner, data: learner.get_preds(data),
    "lr_find": lambda learner, data: learner.lr_find(data, num_it=3),
    "epoch": lambda learner, data: learner.epoch(ValidationPhase(), data),
    "step": lambda learner, data: [learner.step(TrainingPhase(), batch) for batch in data],
}


@pytest.mark.parametrize("entry_point", list(ENTRY_POINTS))
def test_autocast_is_left_when_the_model_raises_in_any_entry_point(entry_point: str) -> None:
    model = FailingModel()
    learner = Learner(model, torch.nn.functional.mse_loss, data=(regression_batches(3), None), callbacks=[MixedPrecision()])
    with pytest.raises(RuntimeError, match=r"out of memory \(simulated\)"):
        ENTRY_POINTS[entry_point](learner, regression_batches(3))
    assert not torch.is_autocast_enabled("cpu")  # teardown() left it, on the way out
    assert learner.batch.y_pred is None or entry_point == "step"  # step() keeps its batch


def test_the_loss_is_scaled_after_other_loss_writers_in_either_order() -> None:
    for callbacks in ([MixedPrecision(torch.float16), AuxiliaryLoss()], [AuxiliaryLoss(), MixedPrecision(torch.float16)]):
        learner = make_test_learner(*callbacks, n_batches=2)
        plan = learner.explain(BackwardBegin, TrainingPhase)
        assert plan.index("AuxiliaryLoss.add") < plan.index("MixedPrecision.scale")
        assert "resolve_conflict says RunFirst(AuxiliaryLoss)" in plan
        learner.fit(1)


def penalised_mse(y_pred: torch.Tensor, y: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
    return torch.nn.functional.mse_loss(y_pred, y) + 0.01 * model.weight.square().sum()


def test_a_weight_penalty_combines_with_float16_in_either_order() -> None:
    # On main this combination raised "batch.loss was rewritten after MixedPrecision(torch.float16)
    # scaled it" at the first BackwardEnd: MixedPrecision wrote the model at every event, so the
    # penalty, which reads it, ran after the scaling. Now scaling declares batch.loss only.
    reference = make_test_learner(MixedPrecision(torch.float16), n_batches=4)
    reference.loss_fn = lambda y_pred, y: penalised_mse(y_pred, y, reference.model)  # the penalty in loss_fn
    reference.fit(2)
    for callbacks in ([WeightPenalty(), MixedPrecision(torch.float16)], [MixedPrecision(torch.float16), WeightPenalty()]):
        learner = make_test_learner(*callbacks, n_batches=4)
        plan = learner.explain(BackwardBegin, TrainingPhase)
        assert plan.index("Penalty.penalise") < plan.index("MixedPrecision.scale")
        learner.fit(2)
        assert torch.equal(learner.model.weight, reference.model.weight)


def test_a_loss_rewriter_that_also_writes_at_backward_end_is_refused_at_build() -> None:
    # One resolve_conflict answer holds for both events, and this pair needs two orders.
    for penalty in (PenaltyAndClipping(), NarrowedPenaltyAndClipping()):
        name = type(penalty).__name__
        for callbacks in ([penalty, MixedPrecision(torch.float16)], [MixedPrecision(torch.float16), penalty]):
            with pytest.raises(
                ConflictError,
                match=rf"MixedPrecision\(torch\.float16\) and {name} cannot be ordered: {name} rewrites batch\.loss at "
                rf"BackwardBegin.*Split {name} into two callbacks, one per event",
            ):
                make_test_learner(*callbacks)
    learner = make_test_learner(PenaltyAndClipping(), MixedPrecision(torch.bfloat16))  # nothing to scale
    assert run_order(learner, BackwardEnd, TrainingPhase) == ["MixedPrecision.unscale", "PenaltyAndClipping.clip"]
    learner.fit(1)


class LateRewrite(Callback):
    """Rewrites the loss at BackwardBegin, ordered after MixedPrecision by run_after."""

    run_after = (MixedPrecision,)

    @on(BackwardBegin, phase=TrainingPhase, access={"batch.loss": WRITE})
    def add(self, event: Event, phase: Phase, learner: Any) -> None:
        learner.batch.loss = learner.batch.loss + 0.0


def test_a_loss_rewritten_after_scaling_all_the_same_is_caught_with_the_fix() -> None:
    learner = make_test_learner(LateRewrite(), MixedPrecision(torch.float16))
    with pytest.raises(CadenceError, match=r"batch.loss was rewritten after MixedPrecision\(torch.float16\) scaled it.*do not order it after MixedPrecision with run_after"):
        learner.fit(1)


def test_scaler_state_round_trips_without_pickle() -> None:
    precision = MixedPrecision(torch.float16)
    assert precision.state_dict() == {}
    make_test_learner(precision, n_batches=1).fit(1)
    buffer = io.BytesIO()
    torch.save(precision.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert state["scaler"]["scale"] in (65536.0, 32768.0)  # the first step may overflow
    state["scaler"]["scale"] = 1024.0
    resumed = MixedPrecision(torch.float16)
    resumed.load_state_dict(state)  # before the scaler exists: applied at FitBegin
    assert resumed.state_dict()["scaler"]["scale"] == 1024.0
    make_test_learner(resumed, n_batches=1).fit(1)
    assert resumed.scaler is not None and resumed.scaler.get_scale() == 1024.0
    assert MixedPrecision().state_dict() == {}
    with pytest.raises(ValueError, match=r"expects what state_dict returned for the same dtype"):
        MixedPrecision().load_state_dict(state)


class OffloadingExecutor:
    """Runs BatchBegin handlers on the learner's thread and every other handler on a worker."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(1)

    def run(self, plan: Any, event: Event, phase: Phase) -> None:
        for handler, view in plan.calls:
            if isinstance(event, BatchBegin):
                handler(event, phase, view)
            else:
                self.pool.submit(handler, event, phase, view).result()


def test_handlers_on_another_thread_are_an_error() -> None:
    executor, precision = OffloadingExecutor(), MixedPrecision()
    learner = make_test_learner(precision, executor=executor)
    with pytest.raises(CadenceError, match=r"entered autocast on one thread and is leaving it on another.*Use SerialExecutor"):
        learner.fit(1)
    executor.pool.shutdown()
    # teardown() runs on the learner's thread, the one that entered: it left autocast there.
    assert not torch.is_autocast_enabled("cpu") and not precision._active


def test_two_mixed_precisions_cannot_be_used_together() -> None:
    with pytest.raises(ConflictError, match=r"MixedPrecision#1 and MixedPrecision#2 cannot be used together"):
        make_test_learner(MixedPrecision(), MixedPrecision())


def test_constructor_errors() -> None:
    with pytest.raises(ValueError, match=r"expects torch.bfloat16 or torch.float16; got torch.float32. For full precision, leave MixedPrecision out"):
        MixedPrecision(torch.float32)
    with pytest.raises(ValueError, match=r"device_type=...\) expects a device type autocast supports, such as 'cuda' or 'cpu'"):
        MixedPrecision(device_type="tpu9")
    assert repr(MixedPrecision()) == "MixedPrecision()"
    assert repr(MixedPrecision(torch.float16, device_type="cpu")) == "MixedPrecision(dtype=torch.float16, device_type='cpu')"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_cuda_device_type_without_cuda() -> None:
    with pytest.raises(ValueError, match=r"CUDA is not available here; use None"):
        MixedPrecision(device_type="cuda")


@needs_cuda
def test_float16_on_cuda() -> None:
    probe = Probe()
    precision = MixedPrecision(torch.float16)
    learner = make_test_learner(precision, ToDevice("cuda"), probe, n_batches=2)
    learner.fit(1)
    assert probe.seen[("y_pred", "train")] == [torch.float16] * 2
    assert precision.scaler is not None and precision.state_dict()["scaler"]["scale"] <= 65536.0
    assert all(g is None or g.device.type == "cuda" for g in probe.seen[("grad", "train")])
    assert not torch.is_autocast_enabled("cuda")
