"""StopOnNaNLoss: stops at the first non-finite training loss, naming the step, without a sync
per batch on an accelerator."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from cadence import WRITE, Callback, CancelFit, Learner, on
from cadence.callbacks.checkpointer import Checkpointer
from cadence.callbacks.nan import StopOnNaNLoss
from cadence.checkpointing.files import list_checkpoints
from cadence.events import BackwardEnd, Event
from cadence.phases import Phase, TrainingPhase
from cadence.testing import make_test_learner, regression_batches


def poisoned(bad: dict[int, float], n_batches: int = 10) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Regression batches whose batch ``i`` has its targets replaced by ``bad[i]``."""
    batches = regression_batches(n_batches, 4)
    return [(x, torch.full_like(y, bad[i]) if i in bad else y) for i, (x, y) in enumerate(batches)]


class OnDevice(StopOnNaNLoss):
    """Takes the accelerator path (pending losses, checked every check_every) on CPU tensors."""

    def _readable_at_once(self, loss: Any) -> bool:
        return False


def test_a_nan_loss_stops_fit_naming_the_step() -> None:
    learner = make_test_learner(StopOnNaNLoss())
    result = learner.fit(3, data=(poisoned({2: math.nan}), None)).stopped
    assert isinstance(result, CancelFit)
    assert result.reason == "StopOnNaNLoss: the training loss is nan at step 3 (epoch 1, batch 3)."
    assert result.origin == "StopOnNaNLoss.batch_end"


def test_an_infinite_loss_stops_fit_in_a_later_epoch() -> None:
    clean = regression_batches(4, 4)
    learner = make_test_learner(StopOnNaNLoss())
    assert learner.fit(2, data=(clean, None)).stopped is None
    result = learner.fit(1, data=(poisoned({1: math.inf}, n_batches=4), None)).stopped
    assert result is not None
    assert result.reason == "StopOnNaNLoss: the training loss is inf at step 10 (epoch 3, batch 2)."


def test_finite_losses_run_every_epoch() -> None:
    assert make_test_learner(StopOnNaNLoss()).fit(2).stopped is None


def test_validation_losses_are_not_checked() -> None:
    learner = make_test_learner(StopOnNaNLoss())
    assert learner.fit(1, data=(regression_batches(4, 4), poisoned({0: math.nan}, 4))).stopped is None


def test_on_an_accelerator_losses_are_checked_every_check_every_steps_naming_the_first_bad_one() -> None:
    seen: list[int] = []
    callback = OnDevice(check_every=4)
    learner = make_test_learner(callback)
    original = callback._check

    def counting() -> None:
        seen.append(callback._steps)
        original()

    callback._check = counting  # type: ignore[method-assign]
    result = learner.fit(1, data=(poisoned({5: math.nan, 6: math.inf}), None)).stopped
    assert result is not None
    assert result.reason == "StopOnNaNLoss: the training loss is nan at step 6 (epoch 1, batch 6)."
    assert seen == [4, 8]  # read twice in 8 steps, not once per step


def test_on_an_accelerator_the_end_of_the_epoch_checks_what_is_pending() -> None:
    learner = make_test_learner(OnDevice(check_every=32))
    result = learner.fit(2, data=(poisoned({8: math.inf}), None)).stopped
    assert result is not None
    assert result.reason == "StopOnNaNLoss: the training loss is inf at step 9 (epoch 1, batch 9)."
    assert result.origin == "OnDevice.epoch_end"


def test_check_every_must_be_a_positive_int() -> None:
    with pytest.raises(ValueError, match=r"StopOnNaNLoss\(check_every=...\) expects a positive int; got 0\."):
        StopOnNaNLoss(check_every=0)


def test_state_dict_keeps_the_step_numbering() -> None:
    first = make_test_learner(StopOnNaNLoss())
    first.fit(1, data=(regression_batches(4, 4), None))
    state = first.get_callback(StopOnNaNLoss).state_dict()  # type: ignore[union-attr]
    assert state == {"steps": 4, "epochs": 1, "epoch_start": 0}
    callback = StopOnNaNLoss()
    callback.load_state_dict(state)
    result = make_test_learner(callback).fit(1, data=(poisoned({0: math.nan}), None)).stopped
    assert result is not None and "at step 5 (epoch 2, batch 1)" in result.reason


def test_after_a_mid_epoch_resume_the_reason_names_the_batch_of_the_epoch(tmp_path: Path) -> None:
    clean = regression_batches(4, 4)
    make_test_learner(StopOnNaNLoss(), Checkpointer(tmp_path, every_steps=1, keep_last=100)).fit(2, data=(clean, None))
    path = next(p for p in list_checkpoints(tmp_path) if p.name.endswith("epoch1-batch2.pt"))
    resumed = make_test_learner(StopOnNaNLoss(), Checkpointer(tmp_path / "again"))
    # The same data, but the last batch of the second epoch is poisoned.
    result = resumed.fit(2, data=(poisoned({3: math.nan}, n_batches=4), None), resume=path).stopped
    assert result is not None
    assert result.reason == "StopOnNaNLoss: the training loss is nan at step 8 (epoch 2, batch 4)."


def test_a_state_saved_without_the_epoch_start_counts_batches_from_the_checkpoint() -> None:
    callback = StopOnNaNLoss()
    callback.load_state_dict({"steps": 6, "epochs": 2})
    assert callback._epoch_start == 6


class Unreduced(Callback):
    """Hands StopOnNaNLoss a per-sample loss (the step itself ran on the scalar)."""

    state_access = {"batch.loss": WRITE}

    def __init__(self, shapes: list[int]) -> None:
        self.shapes = shapes

    @on(BackwardEnd, phase=TrainingPhase)
    def widen(self, event: Event, phase: Phase, learner: Any) -> None:
        learner.batch.loss = learner.batch.loss.expand(self.shapes.pop(0))


SCALAR_FIX = r'Reduce the loss to a scalar in loss_fn, e.g. reduction="mean" or loss_fn=lambda y_pred, y: per_sample\(y_pred, y\).mean\(\).'


@pytest.mark.parametrize(
    ("callback", "shapes", "what"),
    [
        (StopOnNaNLoss(), [4], r"a tensor of shape \(4,\)"),
        (OnDevice(check_every=2), [4, 4], r"a tensor of shape \(4,\)"),  # same shapes: they stack
        (OnDevice(check_every=2), [4, 3], r"a tensor of shape \(3,\) and a tensor of shape \(4,\)"),
    ],
)
def test_a_loss_that_is_not_a_scalar_is_a_clear_error(callback: StopOnNaNLoss, shapes: list[int], what: str) -> None:
    learner = make_test_learner(Unreduced(shapes), callback)
    with pytest.raises(ValueError, match=rf"StopOnNaNLoss checks one number per training batch, but batch.loss is {what}, not a scalar. {SCALAR_FIX}"):
        learner.fit(1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_no_host_device_sync_per_batch_on_cuda() -> None:
    device = torch.device("cuda")
    batches = [(x.to(device), y.to(device)) for x, y in poisoned({40: math.nan}, n_batches=50)]

    def strict(data: list[Any]) -> Any:
        for batch in data:
            torch.cuda.set_sync_debug_mode("error")
            try:
                yield batch
            finally:
                torch.cuda.set_sync_debug_mode("default")

    model = torch.nn.Linear(1, 1, bias=False).to(device)
    learner = Learner(model, torch.nn.functional.mse_loss, torch.optim.SGD(model.parameters(), lr=0.1),
                      callbacks=[StopOnNaNLoss(check_every=1000)], default_callbacks=False)
    result = learner.fit(1, data=(strict(batches), None)).stopped
    assert result is not None
    assert result.reason == "StopOnNaNLoss: the training loss is nan at step 41 (epoch 1, batch 41)."
