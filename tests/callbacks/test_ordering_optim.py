"""Pairs that are ordering bugs in other libraries, each in every list order.

- MixedPrecision + GradientClipping: clipping must see unscaled gradients.
- GradientAccumulation + GradientClipping (+ MixedPrecision): clip the summed gradient, after
  unscaling each micro-batch.
- Scheduler + ToDevice + Recorder: a cycle in FluxTraining.jl (#122); here it builds, ToDevice
  runs first, and the optimizer keeps its state and steps with the scheduled value.
"""

from __future__ import annotations

from itertools import permutations
from typing import Any

import pytest
import torch

from cadence import READ, Callback, Learner, Recorder, on
from cadence.callbacks.accumulation import GradientAccumulation
from cadence.callbacks.clipping import GradientClipping
from cadence.callbacks.device import ToDevice
from cadence.callbacks.precision import MixedPrecision
from cadence.callbacks.scheduler import Scheduler
from cadence.events import BackwardEnd, BatchBegin, Event, FitBegin
from cadence.phases import Phase, TrainingPhase
from cadence.schedules import cosine
from cadence.testing import make_test_learner, regression_batches


class Probe(Callback):
    """Reads the learning rate and the gradient norm the optimizer is about to step with."""

    state_access = {"optimizer": READ, "model": READ}

    def __init__(self) -> None:
        self.lrs: list[float] = []
        self.norms: list[float | None] = []

    @on(BackwardEnd, phase=TrainingPhase)
    def look(self, event: Event, phase: Phase, learner: Any) -> None:
        self.lrs.append(learner.optimizer.param_groups[0]["lr"])
        grads = [p.grad for p in learner.model.parameters() if p.grad is not None]
        self.norms.append(float(torch.cat([g.flatten() for g in grads]).norm()) if grads else None)


def in_order(plan: str, *labels: str) -> bool:
    positions = [plan.index(label) for label in labels]
    return positions == sorted(positions)


def scaled(scale: float) -> MixedPrecision:
    precision = MixedPrecision(torch.float16)
    precision.load_state_dict(
        {"scaler": {"scale": scale, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000, "_growth_tracker": 0}}
    )
    return precision


@pytest.mark.parametrize("clipping_first", [False, True])
def test_mixed_precision_unscales_before_clipping(clipping_first: bool) -> None:
    precision, clipping, probe = scaled(1024.0), GradientClipping(max_norm=0.5), Probe()
    callbacks = [clipping, precision] if clipping_first else [precision, clipping]
    learner = make_test_learner(*callbacks, probe, n_batches=4)
    plan = learner.explain(BackwardEnd, TrainingPhase)
    assert in_order(plan, "MixedPrecision.unscale", "GradientClipping.clip", "Probe.look")
    assert "MixedPrecision and GradientClipping both write model; resolve_conflict says RunFirst(MixedPrecision)" in plan
    learner.fit(1)
    # Clipping measured the true (unscaled) gradient, and the optimizer saw it bounded by
    # max_norm, not by max_norm / 1024 as when clipping runs on scaled gradients.
    assert clipping.last_norm is not None and float(clipping.last_norm) < 100
    assert all(n is not None and 0.05 < n <= 0.5 * (1 + 1e-3) for n in probe.norms)


@pytest.mark.parametrize("order", list(permutations(range(3))))
def test_unscale_then_accumulate_then_clip_in_any_order(order: tuple[int, ...]) -> None:
    trio: list[Callback] = [scaled(256.0), GradientAccumulation(2), GradientClipping(max_norm=0.5)]
    probe = Probe()
    learner = make_test_learner(*[trio[i] for i in order], probe, n_batches=4)
    plan = learner.explain(BackwardEnd, TrainingPhase)
    assert in_order(plan, "MixedPrecision.unscale", "GradientAccumulation.accumulate", "GradientClipping.clip")
    learner.fit(1)
    # Between steps the gradients are stashed; at each step the clipped mean is there.
    assert [n is None for n in probe.norms] == [True, False, True, False]
    assert all(n is not None and 0.05 < n <= 0.5 * (1 + 1e-3) for n in probe.norms[1::2])


@pytest.mark.parametrize("clipping_first", [False, True])
def test_clipping_sees_the_accumulated_mean_gradient(clipping_first: bool) -> None:
    accumulation, clipping = GradientAccumulation(4), GradientClipping(max_norm=1e-3)
    callbacks = [clipping, accumulation] if clipping_first else [accumulation, clipping]
    learner = make_test_learner(*callbacks, n_batches=4)
    plan = learner.explain(BackwardEnd, TrainingPhase)
    assert in_order(plan, "GradientAccumulation.accumulate", "GradientClipping.clip")
    assert "resolve_conflict says RunFirst(GradientAccumulation)" in plan
    learner.fit(1)  # one group of 4: one step, from the initial weights
    batches = regression_batches(4, 8)
    torch.manual_seed(0)  # the initial weights of make_test_learner
    model = torch.nn.Linear(1, 1, bias=False)
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    torch.nn.functional.mse_loss(model(x), y).backward()
    assert model.weight.grad is not None and clipping.last_norm is not None
    assert float(clipping.last_norm) == pytest.approx(float(model.weight.grad.norm()), rel=1e-5)


def adam_learner(*callbacks: Callback) -> Learner:
    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1)
    batches = regression_batches(4, 8)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    return Learner(model, torch.nn.functional.mse_loss, optimizer, data=(batches, batches), callbacks=callbacks, default_callbacks=False)


@pytest.mark.parametrize("order", list(permutations(range(3))))
def test_scheduler_to_device_recorder_builds_in_any_order(order: tuple[int, ...]) -> None:
    schedule = cosine(0.01, 0.001)
    trio: list[Callback] = [Scheduler(lr=schedule), ToDevice("cpu"), Recorder()]
    probe = Probe()
    learner = adam_learner(*[trio[i] for i in order], probe)
    plan = learner.explain(FitBegin)  # both write the optimizer there: ToDevice moves it first
    assert in_order(plan, "ToDevice", "Scheduler"), plan
    assert "resolve_conflict says RunFirst(ToDevice)" in plan
    # At BatchBegin ToDevice writes only batch.x and batch.y: nothing to order against Scheduler.
    assert "after" not in learner.explain(BatchBegin, TrainingPhase)
    learner.fit(2)
    assert probe.lrs == [schedule(step, 8) for step in range(8)]
    state = learner.optimizer.state[learner.model.weight]
    assert float(state["step"]) == 8  # the optimizer was never rebuilt
    assert learner.cbstate.history[TrainingPhase()].steps == 8
    assert learner.cbstate.hyperparams == {"lr/group0": 0.001}
