"""StopOnNaNLoss: end training when the training loss is NaN or infinite."""

from __future__ import annotations

import math
from typing import Any

import torch

from cadence import READ, Callback, CancelFit, on
from cadence.events import BatchEnd, EpochBegin, EpochEnd, Event
from cadence.phases import Phase, TrainingPhase

__all__ = ["StopOnNaNLoss"]


def _show(loss: object) -> str:
    if isinstance(loss, torch.Tensor):
        return f"a tensor of shape {tuple(loss.shape)}"
    return f"a {type(loss).__name__}"


def _not_a_scalar(what: str) -> ValueError:
    return ValueError(
        f"StopOnNaNLoss checks one number per training batch, but batch.loss is {what}, not a "
        f"scalar. Reduce the loss to a scalar in loss_fn, e.g. reduction=\"mean\" or "
        f"loss_fn=lambda y_pred, y: per_sample(y_pred, y).mean()."
    )


class StopOnNaNLoss(Callback):
    """Ends ``fit`` with ``CancelFit`` when a training batch's loss is NaN or infinite; the
    reason names the first such step.

    Args:
        check_every: On an accelerator, how many steps go by between checks. The losses of
            those steps are kept (as device scalars) and checked together, so a step costs a
            list append and no host-device sync; training stops at most ``check_every - 1``
            steps (and at the latest at the end of the epoch) after the bad one. On CPU, where
            reading the loss costs no sync, every step is checked at once.

    Steps are counted by this callback over every training phase epoch it sees (1-based).
    Only training phases (``TrainingPhase`` and subclasses) are checked. In a distributed fit
    each rank checks its own loss; a stop is agreed by every rank after the next backward pass
    (``cadence.distributed.agreement``), so all stop with the weights of the same batch.

    Example:
        >>> from cadence.testing import make_test_learner
        >>> learner = make_test_learner(StopOnNaNLoss(), lr=1e20)  # diverges at once
        >>> print(learner.fit(5).reason)
        StopOnNaNLoss: the training loss is inf at step 2 (epoch 1, batch 2).
    """

    state_access = {"batch.loss": READ}
    reset_when = "learner"

    def __init__(self, *, check_every: int = 32) -> None:
        if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
            raise ValueError(f"StopOnNaNLoss(check_every=...) expects a positive int; got {check_every!r}.")
        self.check_every = check_every
        self._steps = 0  # steps seen over all epochs
        self._epochs = 0
        self._epoch_start = 0  # self._steps when the current epoch began
        self._pending: list[torch.Tensor] = []  # unchecked device losses, oldest first
        self._on_host: bool | None = None  # decided at the first batch of each epoch

    @on(EpochBegin, phase=TrainingPhase)
    def epoch_begin(self, event: Event, phase: Phase, learner: Any) -> None:
        self._epochs += 1
        self._epoch_start = self._steps
        self._pending.clear()
        self._on_host = None

    @on(BatchEnd, phase=TrainingPhase)
    def batch_end(self, event: Event, phase: Phase, learner: Any) -> None:
        loss = learner.batch.loss
        self._steps += 1
        if self._on_host is None:
            self._on_host = self._readable_at_once(loss)
        if self._on_host:
            try:
                finite = math.isfinite(loss)
            except (TypeError, ValueError, RuntimeError):  # no check on the normal path
                raise _not_a_scalar(_show(loss)) from None
            if not finite:
                raise CancelFit(self._reason(self._steps, float(loss)))
            return
        pending = self._pending
        pending.append(loss.detach() if loss.requires_grad else loss)  # keep no graph alive
        if len(pending) >= self.check_every:
            self._check()

    @on(EpochEnd, phase=TrainingPhase)
    def epoch_end(self, event: Event, phase: Phase, learner: Any) -> None:
        self._check()

    def _readable_at_once(self, loss: Any) -> bool:
        """Whether reading ``loss`` costs no host-device sync (a CPU tensor or a number)."""
        return not isinstance(loss, torch.Tensor) or loss.is_cpu

    def _check(self) -> None:
        """Read the pending losses (one sync) and stop at the first that is not finite."""
        pending = self._pending
        if not pending:
            return
        first = self._steps - len(pending) + 1
        try:
            losses = torch.stack(pending).float()
        except RuntimeError:  # tensors of different shapes
            raise _not_a_scalar(" and ".join(sorted({_show(p) for p in pending}))) from None
        if losses.ndim != 1:
            raise _not_a_scalar(_show(pending[0]))
        pending.clear()
        finite = torch.isfinite(losses)
        if not bool(finite.all()):
            bad = int(torch.nonzero(~finite)[0, 0])
            raise CancelFit(self._reason(first + bad, float(losses[bad])))

    def _reason(self, step: int, value: float) -> str:
        return (
            f"StopOnNaNLoss: the training loss is {value} at step {step} "
            f"(epoch {self._epochs}, batch {step - self._epoch_start})."
        )

    def reset(self) -> None:
        """A fit in another learner names steps and epochs from 1 (a second fit of the same
        learner counts on, as ``Recorder`` does)."""
        self._steps = self._epochs = self._epoch_start = 0
        self._pending.clear()
        self._on_host = None

    def state_dict(self) -> dict[str, Any]:
        """The step and epoch counters and the step the current epoch began at, so that steps
        and batches are named alike after a resume, mid-epoch too."""
        return {"steps": self._steps, "epochs": self._epochs, "epoch_start": self._epoch_start}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned. A state saved without ``epoch_start`` (before it
        was saved) counts the batches of the resumed epoch from the checkpoint on."""
        self._steps, self._epochs = int(state["steps"]), int(state["epochs"])
        self._epoch_start = int(state.get("epoch_start", self._steps))
