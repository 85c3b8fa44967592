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

    Checkpoints: ``state_dict()`` holds the open group, so a checkpoint taken in the middle of
    one resumes exactly: ``count`` (its micro-batches so far), ``seen`` (the epoch's
    micro-batches so far) and ``stash``, the gradients summed so far as CPU tensors, one per
    trainable parameter in ``model.parameters()`` order (``None`` where there is none yet).
    ``load_state_dict`` puts them back on each parameter's device. ``fit(..., resume=...)``
    restores a mid-epoch checkpoint after the epoch's ``EpochBegin`` (which starts a new group)
    and one at an epoch boundary, which has no open group, after ``FitBegin``.

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
        >>> GradientAccumulation(4).state_dict()
        {'count': 0, 'seen': 0, 'stash': []}
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

    def reset(self) -> None:
        """A new fit starts with no micro-batch held (each training epoch starts so anyway),
        and lets go of the last learner's parameters (the next ``EpochBegin`` takes them)."""
        self._params, self._stash = [], []
        self._count = self._seen = 0
        self._length = None

    def state_dict(self) -> dict[str, Any]:
        """The open group: ``count``, ``seen`` and ``stash`` (copies on the CPU; see above)."""
        stash = [None if held is None else held.detach().to("cpu", copy=True) for held in self._stash]
        return {"count": self._count, "seen": self._seen, "stash": stash}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned; the gradients go to their parameters' devices.

        Raises:
            ValueError: ``state`` is not such a dict, or its gradients do not match the model's
                trainable parameters (another model, or other parameters frozen).
        """
        count, seen, stash = _checked(state, self.n)
        if any(held is not None for held in stash):
            if self._params:
                _check_stash(stash, self._params)
                stash = [None if h is None else h.to(p.device, copy=True) for h, p in zip(stash, self._params)]
            else:
                # Loaded before the first training epoch began, whose EpochBegin starts a new group.
                stash = [None if h is None else h.clone() for h in stash]
            self._stash = stash
        else:
            self._stash = [None] * len(self._params)
        self._count, self._seen = count, seen

    def resolve_conflict(self, other: Callback) -> Any:
        if isinstance(other, GradientAccumulation):
            return Unresolvable()
        if isinstance(other, MixedPrecision):
            return RunFirst(other)
        if isinstance(other, GradientClipping):
            return RunFirst(self)
        return NotImplemented


def _checked(state: dict[str, Any], n: int) -> tuple[int, int, list[torch.Tensor | None]]:
    """``(count, seen, stash)`` from a ``state_dict()``, or a ValueError that says what is wrong."""
    if not isinstance(state, dict) or set(state) != {"count", "seen", "stash"}:
        found = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise ValueError(
            f"GradientAccumulation.load_state_dict expects the keys ['count', 'seen', 'stash']; got "
            f"{found}. Pass what GradientAccumulation.state_dict() returned."
        )
    count, seen, stash = state["count"], state["seen"], state["stash"]
    if not (all(type(v) is int and v >= 0 for v in (count, seen)) and count <= seen and count < n):
        raise ValueError(
            f"GradientAccumulation({n}).load_state_dict got count={count!r} and seen={seen!r}; an "
            f"open group holds 0 to {n - 1} micro-batches, and seen >= count. Resume with the n the "
            f"state was saved with."
        )
    if not isinstance(stash, list) or not all(held is None or isinstance(held, torch.Tensor) for held in stash):
        raise ValueError(
            f"GradientAccumulation.load_state_dict expects 'stash' to be a list of tensors or None, "
            f"one per trainable parameter; got a {type(stash).__name__} holding other values. Pass "
            f"what GradientAccumulation.state_dict() returned."
        )
    return count, seen, stash


def _check_stash(stash: list[torch.Tensor | None], params: list[torch.nn.Parameter]) -> None:
    shapes = [tuple(p.shape) for p in params]
    saved = [None if held is None else tuple(held.shape) for held in stash]
    if len(saved) != len(shapes) or any(s is not None and s != p for s, p in zip(saved, shapes)):
        raise ValueError(
            f"GradientAccumulation.load_state_dict got gradients of shapes {saved}, but the model's "
            f"trainable parameters have shapes {shapes}. Restore it into the learner it was saved "
            f"from: the same model, with the same parameters requiring gradients."
        )
