"""GradientAccumulation: one optimizer step per ``n`` micro-batches."""

from __future__ import annotations

import logging
from collections.abc import Sized
from typing import Any

import torch

from cadence import WRITE, Callback, RunFirst, Unresolvable, on
from cadence.callbacks.clipping import GradientClipping
from cadence.callbacks.precision import MixedPrecision
from cadence.events import BackwardEnd, EpochBegin, EpochEnd, Event
from cadence.phases import Phase, TrainingPhase

__all__ = ["GradientAccumulation"]

log = logging.getLogger(__name__)


class GradientAccumulation(Callback):
    """Steps the optimizer once per ``n`` training batches (micro-batches) with their mean
    gradient, as if they were one batch ``n`` times larger (exactly so for mean-reduced losses
    and equal micro-batch sizes).

    The training loop is unchanged. At ``BackwardEnd`` of each micro-batch but the last of a
    group, the gradients move into a buffer and ``param.grad`` becomes ``None``, so the
    optimizer step that follows skips every parameter (torch's optimizers skip parameters
    without a gradient: no momentum or weight-decay update either). At the last micro-batch the
    buffer is added back and the sum divided by the group's size, so the optimizer, and
    every callback after this one at ``BackwardEnd``, sees the mean gradient.

    The epoch's last batch closes its group, full or not, and the optimizer steps with the
    mean over that shorter group (Lightning also steps at the end of the epoch). That needs
    ``len()`` of the training data; without it, or when batches were cancelled, a trailing
    partial group is dropped at ``EpochEnd`` (logged). Groups never span epochs.
    ``batch.loss`` is left as computed. A ``Scheduler`` counts micro-batches as steps.

    Ordering: after ``MixedPrecision`` (gradients are unscaled per micro-batch, before they
    are summed) and before ``GradientClipping`` (which clips the mean gradient), in any list
    order (``resolve_conflict``). Other callbacks that read the model at ``BackwardEnd`` run
    after it and see ``None`` gradients between steps.

    Args:
        n: Micro-batches per optimizer step (1 changes nothing).

    Example:
        >>> from cadence.testing import make_test_learner
        >>> learner = make_test_learner(GradientAccumulation(4), n_batches=8)
        >>> _ = learner.fit(1)
        >>> learner.optimizer.state_dict()["state"]  # SGD without momentum keeps none
        {}
    """

    state_access = {"model": WRITE}

    def __init__(self, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(
                f"GradientAccumulation(n) expects the number of micro-batches per optimizer step, "
                f"an int >= 1, e.g. GradientAccumulation(4); got {n!r}."
            )
        self.n = n
        self._params: list[torch.nn.Parameter] = []
        self._stash: list[torch.Tensor | None] = []
        self._count = 0  # micro-batches in the open group
        self._seen = 0  # micro-batches this epoch
        self._length: int | None = None

    @on(EpochBegin, phase=TrainingPhase)
    def epoch_begin(self, event: EpochBegin, phase: Phase, learner: Any) -> None:
        self._params = [p for p in learner.model.parameters() if p.requires_grad]
        self._stash = [None] * len(self._params)
        self._count = self._seen = 0
        self._length = len(event.data) if isinstance(event.data, Sized) else None

    @on(BackwardEnd, phase=TrainingPhase)
    def accumulate(self, event: Event, phase: Phase, learner: Any) -> None:
        self._count += 1
        self._seen += 1
        stash = self._stash
        if self._count < self.n and self._seen != self._length:
            for i, param in enumerate(self._params):
                grad = param.grad
                if grad is not None:
                    held = stash[i]
                    if held is None:
                        stash[i] = grad
                    else:
                        held.add_(grad)
                    param.grad = None
            return
        size, self._count = self._count, 0
        grads = []
        for i, param in enumerate(self._params):
            held = stash[i]
            if held is not None:
                stash[i] = None
                if param.grad is not None:
                    held.add_(param.grad)
                param.grad = held
            if param.grad is not None:
                grads.append(param.grad)
        if size > 1 and grads:
            torch._foreach_mul_(grads, 1.0 / size)

    @on(EpochEnd, phase=TrainingPhase)
    def epoch_end(self, event: Event, phase: Phase, learner: Any) -> None:
        if self._count:
            log.warning(
                "GradientAccumulation dropped a partial group of %d micro-batch(es) at the end of "
                "the epoch: the training data has no len(), or batches were cancelled.",
                self._count,
            )
        self._stash = [None] * len(self._params)
        self._count = 0

    def resolve_conflict(self, other: Callback) -> Any:
        if isinstance(other, GradientAccumulation):
            return Unresolvable()
        if isinstance(other, MixedPrecision):
            return RunFirst(other)
        if isinstance(other, GradientClipping):
            return RunFirst(self)
        return NotImplemented

    def __repr__(self) -> str:
        return f"GradientAccumulation({self.n})"
