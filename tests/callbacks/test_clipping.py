"""GradientClipping: the gradients the optimizer steps with are bounded."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from cadence import READ, WRITE, Callback, ConflictError, on
from cadence.callbacks.accumulation import GradientAccumulation
from cadence.callbacks.clipping import GradientClipping
from cadence.callbacks.lambda_callback import LambdaCallback
from cadence.events import BackwardEnd, BatchEnd, Event
from cadence.phases import Phase, TrainingPhase
from cadence.testing import make_test_learner


class GradientProbe(Callback):
    """Reads the gradients at BackwardEnd; as a reader it runs after every writer of the model."""

    state_access = {"model": READ}

    def __init__(self) -> None:
        self.grads: list[torch.Tensor] = []

    @on(BackwardEnd, phase=TrainingPhase)
    def look(self, event: Event, phase: Phase, learner: Any) -> None:
        self.grads.append(torch.cat([p.grad.flatten() for p in learner.model.parameters()]).clone())


class GradientNoise(Callback):
    state_access = {"model": WRITE}

    @on(BackwardEnd, phase=TrainingPhase)
    def add(self, event: Event, phase: Phase, learner: Any) -> None:
        for p in learner.model.parameters():
            p.grad.add_(0.01)


def test_max_norm_bounds_the_norm_the_optimizer_sees() -> None:
    clipping, probe = GradientClipping(max_norm=0.05), GradientProbe()
    unclipped = GradientProbe()
    make_test_learner(unclipped).fit(1)
    learner = make_test_learner(clipping, probe)
    learner.fit(1)
    assert max(float(g.norm()) for g in unclipped.grads) > 0.5  # clipping had work to do
    assert all(float(g.norm()) <= 0.05 * (1 + 1e-5) for g in probe.grads)
    assert isinstance(clipping.last_norm, torch.Tensor) and float(clipping.last_norm) > 0.05


def test_max_value_clamps_each_value() -> None:
    probe = GradientProbe()
    make_test_learner(GradientClipping(max_value=0.01), probe).fit(1)
    assert all(float(g.abs().max()) <= 0.01 for g in probe.grads)
    assert any(float(g.abs().max()) == pytest.approx(0.01) for g in probe.grads)


def test_infinity_norm() -> None:
    probe = GradientProbe()
    learner = make_test_learner(GradientClipping(max_norm=0.02, norm_type=math.inf, foreach=False), probe)
    learner.fit(1)
    assert all(float(g.abs().max()) <= 0.02 * (1 + 1e-5) for g in probe.grads)


def test_last_norm_is_the_last_clipped_norm_under_accumulation() -> None:
    clipping = GradientClipping(max_norm=0.01)
    norms: list[float | None] = []

    def look(event: Event, phase: Phase, learner: Any) -> None:
        norms.append(None if clipping.last_norm is None else float(clipping.last_norm))

    learner = make_test_learner(
        clipping, GradientAccumulation(4), LambdaCallback(look, BatchEnd, phase=TrainingPhase), n_batches=6
    )
    learner.fit(1)
    assert norms[:3] == [None, None, None]  # held back: nothing clipped yet
    assert norms[3] is not None and norms[3] > 0.01
    assert norms[4] == norms[3]  # held back again: still the 4th batch's norm
    assert norms[5] is not None and norms[5] != norms[3]  # the epoch's last batch closes its group


def test_another_gradient_writer_must_be_ordered_by_the_user() -> None:
    with pytest.raises(ConflictError, match=r"(?s)Write conflict between GradientClipping and GradientNoise at BackwardEnd in TrainingPhase.*run_after = \(GradientClipping,\) to GradientNoise"):
        make_test_learner(GradientClipping(max_norm=1.0), GradientNoise())


def test_two_clippings_conflict() -> None:
    with pytest.raises(ConflictError, match=r"Two GradientClipping callbacks write the same state; keep one of them"):
        make_test_learner(GradientClipping(max_norm=1.0), GradientClipping(max_value=1.0))


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({}, ValueError, r"needs exactly one bound: GradientClipping\(max_norm=1.0\) .* GradientClipping\(max_value=0.5\)"),
        ({"max_norm": 1.0, "max_value": 1.0}, ValueError, r"needs exactly one bound"),
        ({"max_norm": -1.0}, ValueError, r"GradientClipping\(max_norm=...\) must be > 0; got -1.0"),
        ({"max_value": "1"}, TypeError, r"GradientClipping\(max_value=...\) expects a number; got '1'"),
        ({"max_norm": 1.0, "norm_type": 0}, ValueError, r"norm_type=...\) must be > 0"),
        ({"max_norm": 1.0, "foreach": 1}, TypeError, r"foreach=...\) expects True, False or None"),
    ],
)
def test_constructor_errors(kwargs: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        GradientClipping(**kwargs)


def test_repr() -> None:
    assert repr(GradientClipping(1)) == "GradientClipping(max_norm=1.0)"
    assert repr(GradientClipping(1, norm_type=1)) == "GradientClipping(max_norm=1.0, norm_type=1.0)"
    assert repr(GradientClipping(max_value=0.5)) == "GradientClipping(max_value=0.5)"
