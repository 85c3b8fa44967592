"""lr_find(): fastai's sweep, pinned against a hand-written sweep, and undone exactly."""

from __future__ import annotations

import copy
import math
import random
import sys
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from cadence import CadenceError, CancelBatch, Callback, Learner, LRFinderPhase, LRFinderResult, Metrics, Recorder, Scheduler, on
from cadence.events import BatchEnd, Event, LossBegin
from cadence.lr_finder import valley
from cadence.phases import Phase, TrainingPhase
from cadence.schedules import cosine
from cadence.testing import regression_batches


def make_learner(*callbacks: Any, dropout: float = 0.1) -> Learner:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.Dropout(dropout), torch.nn.Linear(8, 1))
    data = DataLoader(TensorDataset(torch.linspace(-1, 1, 64)[:, None], 3 * torch.linspace(-1, 1, 64)[:, None]), batch_size=8, shuffle=True)
    return Learner(
        model, torch.nn.functional.mse_loss, torch.optim.Adam(model.parameters()),
        data=(data, None), callbacks=list(callbacks), default_callbacks=False,
    )


def hand_written_sweep(learner: Learner, start: float, end: float, num_it: int) -> list[float]:
    """fastai's method written out: lr_i = start * (end / start) ** (i / num_it), the loss
    smoothed with beta 0.98 and debiased, stopping once it exceeds 4x its minimum."""
    model = copy.deepcopy(learner.model)
    optimizer = type(learner.optimizer)(model.parameters())
    optimizer.load_state_dict(copy.deepcopy(learner.optimizer.state_dict()))
    model.train()
    average, best, losses = 0.0, math.inf, []
    batches = iter(())
    for i in range(num_it):
        batch = next(batches, None)
        if batch is None:
            batches = iter(learner.data[0])  # type: ignore[index]
            batch = next(batches)
        for group in optimizer.param_groups:
            group["lr"] = start * (end / start) ** (i / num_it)
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(batch[0]), batch[1])
        loss.backward()
        optimizer.step()
        average = 0.98 * average + (1 - 0.98) * float(loss.detach())
        smoothed = average / (1 - 0.98 ** (i + 1))
        losses.append(smoothed)
        best = min(best, smoothed)
        if smoothed > 4 * best:
            break
    return losses


def test_the_sweep_matches_fastais_method_and_is_undone_exactly() -> None:
    learner = make_learner(Recorder(), Metrics())
    learner.fit(1)  # Adam has state now
    weights = copy.deepcopy(learner.model.state_dict())
    optimizer = copy.deepcopy(learner.optimizer.state_dict())
    learner.model.eval()
    torch.manual_seed(1)
    expected = hand_written_sweep(learner, 1e-5, 1.0, 30)
    torch.manual_seed(1)
    rng = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    result = learner.lr_find(start_lr=1e-5, end_lr=1.0, num_it=30)
    assert result.losses == expected and not result.diverged
    assert result.lrs == [1e-5 * (1.0 / 1e-5) ** (i / 30) for i in range(30)]
    assert math.isfinite(result.suggestion) and 1e-5 <= result.suggestion <= 1.0
    assert result.suggestion == valley(result.lrs, result.losses, 30)
    # Everything the sweep changed is back, bit for bit.
    state = learner.model.state_dict()
    assert all(torch.equal(state[k], weights[k]) for k in weights)
    assert _same(learner.optimizer.state_dict(), optimizer)
    assert not learner.model.training
    assert torch.equal(torch.get_rng_state(), rng[0]) and random.getstate() == rng[1]
    assert np.array_equal(np.random.get_state()[1], rng[2])
    assert learner.batch.loss is None  # the last batch's graph is let go
    assert "lr_find/loss" not in learner.cbstate.metrics.epochs  # the sweep is not tracked


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(_same, a, b))
    return bool(a == b)


def test_the_rngs_and_the_data_order_come_back() -> None:
    learner = make_learner()
    torch.manual_seed(5)
    random.seed(5)
    first = [x for x, _ in learner.data[0]]  # type: ignore[index]
    torch.manual_seed(5)
    random.seed(5)
    learner.lr_find(num_it=12)  # shuffles, and dropout draws
    assert random.random() == random.Random(5).random()
    assert all(torch.equal(a, b) for a, b in zip(first, [x for x, _ in learner.data[0]]))  # type: ignore[index]


def test_divergence_stops_early() -> None:
    learner = make_learner(dropout=0.0)
    result = learner.lr_find(start_lr=1e-3, end_lr=1e4, num_it=100)
    assert result.diverged and len(result.lrs) < 100
    assert result.losses[-1] > 4 * min(result.losses)
    assert result.lrs[0] <= result.suggestion <= result.lrs[-1]
    assert len(learner.lr_find(start_lr=1e-3, end_lr=1e4, num_it=100, stop_div=False).lrs) == 100


class TrainingBatches(Callback):
    """Counts TrainingPhase batches. It keeps no state_dict, so the sweep's undoing cannot
    put the count back: it shows whether a training handler ran."""

    def __init__(self) -> None:
        self.count = 0

    @on(BatchEnd, phase=TrainingPhase)
    def count_batch(self, event: Event, phase: Phase, learner: Any) -> None:
        self.count += 1


def test_training_callbacks_do_not_run_during_the_sweep() -> None:
    scheduler, counter = Scheduler(lr=cosine(0.1, 0.001)), TrainingBatches()
    learner = make_learner(scheduler, counter, Recorder())
    torch.manual_seed(1)
    expected = hand_written_sweep(learner, 1e-5, 1.0, 10)
    torch.manual_seed(1)
    result = learner.lr_find(start_lr=1e-5, end_lr=1.0, num_it=10)
    assert counter.count == 0
    # A Scheduler that set the rate at BatchBegin would train at its rates, not the sweep's.
    assert result.lrs == [1e-5 * (1.0 / 1e-5) ** (i / 10) for i in range(10)] and result.losses == expected
    assert scheduler.position == 0 and learner.optimizer.param_groups[0]["lr"] == 0.001  # Adam's default


def test_the_plot_needs_matplotlib(monkeypatch: pytest.MonkeyPatch) -> None:
    result = LRFinderResult([1e-3, 1e-2, 1e-1], [1.0, 0.5, 2.0], 1e-2, diverged=True)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"plot\(\) needs matplotlib: pip install 'cadence\[plots\]'"):
        result.plot()


def test_the_plot_shows_the_loss_against_the_learning_rate() -> None:
    pytest.importorskip("matplotlib", reason="matplotlib is optional: pip install 'cadence[plots]'")
    import matplotlib

    matplotlib.use("Agg")
    result = make_learner().lr_find(num_it=20)
    ax = result.plot()
    line = ax.get_lines()[0]
    assert list(line.get_xdata()) == result.lrs[:-5] and ax.get_xscale() == "log"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"start_lr": 0}, r"lr_find\(start_lr=\.\.\.\) expects a positive number, e\.g\. start_lr=1e-7; got 0"),
        ({"start_lr": 1.0, "end_lr": 0.1}, r"start_lr must be below end_lr, e\.g\. lr_find\(start_lr=1e-7, end_lr=10\)"),
        ({"num_it": 1}, r"lr_find\(num_it=\.\.\.\) expects an int >= 2 \(fastai uses 100\); got 1"),
    ],
)
def test_bad_arguments_say_what_to_write(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_learner().lr_find(**kwargs)


class CancelEvery(Callback):
    @on(LossBegin, phase=LRFinderPhase)
    def cancel(self, event: Event, phase: Phase, learner: Any) -> None:
        raise CancelBatch


def test_a_sweep_without_a_batch_or_outside_lr_find_is_an_error() -> None:
    with pytest.raises(CadenceError, match=r"lr_find\(\): no batch completed \(every one was cancelled\); nothing to suggest\."):
        make_learner(CancelEvery()).lr_find(num_it=3)
    learner = make_learner()
    with pytest.raises(CadenceError, match=r"^LRFinderPhase runs a sweep that learner\.lr_find\(\) makes; call learner\.lr_find\(\)\."):
        learner.epoch(LRFinderPhase(), learner.data[0])  # type: ignore[index]
    with pytest.raises(TypeError, match=r"lr_find\(stop_div=\.\.\.\) is True \(stop once the loss diverges\) or False; got 'yes'\."):
        learner.lr_find(stop_div="yes")  # type: ignore[arg-type]


def test_data_without_batches_is_an_error() -> None:
    with pytest.raises(CadenceError, match=r"lr_find\(\): the training data yields no batches"):
        make_learner().lr_find([])
    assert len(make_learner().lr_find(regression_batches(3), num_it=7).lrs) == 7  # cycled


def test_a_fit_after_the_sweep_runs_as_without_it() -> None:
    from cadence import MixedPrecision, ProgressPrinter

    def run(sweep: bool) -> Learner:
        learner = make_learner(MixedPrecision(torch.float16), Recorder(), Metrics(), ProgressPrinter())
        if sweep:
            learner.lr_find(start_lr=1e-3, end_lr=1e4, num_it=30)  # diverges: the loss scale backs off
        torch.manual_seed(3)
        learner.fit(1)
        return learner

    swept, plain = run(True), run(False)
    assert all(torch.equal(p, q) for p, q in zip(swept.model.parameters(), plain.model.parameters()))
    assert [cb.state_dict() for cb in swept.callbacks] == [cb.state_dict() for cb in plain.callbacks]


def test_a_sweep_between_two_fits_leaves_the_second_fit_its_reset() -> None:
    # The sweep puts every callback's state back with load_state_dict; that is no state loaded
    # for the next fit, which resets the Scheduler as after any fit (cadence.lifecycle.resets).
    scheduler = Scheduler(lr=cosine(0.1, 0.0))
    learner = make_learner(scheduler)
    learner.fit(1)
    learner.lr_find(num_it=5)
    learner.fit(1)
    assert scheduler.position == 8  # one epoch of 8 batches, not 16


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_the_gpu_with_float16_the_sweep_is_undone() -> None:
    from cadence import MixedPrecision, ToDevice

    learner = make_learner(ToDevice("cuda"), MixedPrecision(torch.float16))
    learner.fit(1)
    weights = copy.deepcopy(learner.model.state_dict())
    result = learner.lr_find(start_lr=1e-4, end_lr=1e3, num_it=20)
    assert math.isfinite(result.suggestion)
    assert all(torch.equal(learner.model.state_dict()[k], weights[k]) for k in weights)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_the_gpu_the_snapshot_takes_no_device_memory() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(2048, 2048).cuda()  # 16 MiB of weights, 32 MiB of Adam state
    batches = [(torch.randn(16, 2048, device="cuda"), torch.randn(16, 2048, device="cuda")) for _ in range(3)]
    learner = Learner(model, torch.nn.functional.mse_loss, torch.optim.Adam(model.parameters()), data=(batches, None), default_callbacks=False)
    learner.fit(1)  # Adam has state, the parameters have gradients
    size = sum(p.numel() * p.element_size() for p in model.parameters())

    def peak(run: Any) -> int:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    training = peak(lambda: learner.fit(1))
    sweep = peak(lambda: learner.lr_find(num_it=3))
    assert sweep < training + size // 2  # copies on the device would add 4 * size
