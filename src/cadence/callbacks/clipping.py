"""GradientClipping: bounds the gradients' norm or values before the optimizer step."""

from __future__ import annotations

import math
from typing import Any

import torch

from cadence import WRITE, Callback, on
from cadence.events import BackwardEnd, Event
from cadence.phases import Phase, TrainingPhase

__all__ = ["GradientClipping"]


class GradientClipping(Callback):
    """Clips the gradients at ``BackwardEnd`` of training, before the optimizer step: rescales
    them so that their total norm is at most ``max_norm`` (``clip_grad_norm_``), or clamps each
    value to ``[-max_value, max_value]`` (``clip_grad_value_``). Give exactly one.

    No host-device synchronisation: the norm stays on the device. The total norm of the last
    clipped gradients (before clipping) is kept in ``last_norm``, a tensor (None before the
    first). A batch without gradients, such as a micro-batch that ``GradientAccumulation``
    holds back, is not clipped and leaves ``last_norm`` as it was.

    Ordering: clipping must see the true, summed gradients. ``MixedPrecision`` (which unscales
    them) and ``GradientAccumulation`` (which sums micro-batches) declare that they run first
    (their ``resolve_conflict`` answers ``RunFirst(self)`` against ``GradientClipping``), so any
    list order works. Against another callback that writes gradients at ``BackwardEnd``, the
    build raises ``ConflictError`` and asks you to order them.

    Args:
        max_norm: The largest total norm of the gradients.
        max_value: The largest absolute value of any gradient element.
        norm_type: The norm ``max_norm`` bounds (2.0 by default; ``math.inf`` for the max norm).
        foreach: Use torch's fused multi-tensor kernels (``None``: where available).

    Example:
        >>> from cadence.testing import make_test_learner
        >>> clipping = GradientClipping(max_norm=0.01)
        >>> learner = make_test_learner(clipping)
        >>> _ = learner.fit(1)
        >>> float(clipping.last_norm) > 0.01
        True
    """

    state_access = {"model": WRITE}

    def __init__(
        self,
        max_norm: float | None = None,
        *,
        max_value: float | None = None,
        norm_type: float = 2.0,
        foreach: bool | None = None,
    ) -> None:
        if (max_norm is None) == (max_value is None):
            raise ValueError(
                "GradientClipping needs exactly one bound: GradientClipping(max_norm=1.0) to bound "
                "the gradients' total norm, or GradientClipping(max_value=0.5) to clamp each value."
            )
        for name, bound in (("max_norm", max_norm), ("max_value", max_value), ("norm_type", norm_type)):
            if bound is None:
                continue
            if isinstance(bound, bool) or not isinstance(bound, (int, float)) or math.isnan(bound):
                raise TypeError(f"GradientClipping({name}=...) expects a number; got {bound!r}.")
            if bound <= 0:
                raise ValueError(f"GradientClipping({name}=...) must be > 0; got {bound!r}.")
        if foreach is not None and not isinstance(foreach, bool):
            raise TypeError(f"GradientClipping(foreach=...) expects True, False or None; got {foreach!r}.")
        self.max_norm = None if max_norm is None else float(max_norm)
        self.max_value = None if max_value is None else float(max_value)
        self.norm_type = float(norm_type)
        self.foreach = foreach
        self.last_norm: torch.Tensor | None = None

    @on(BackwardEnd, phase=TrainingPhase)
    def clip(self, event: Event, phase: Phase, learner: Any) -> None:
        parameters = list(learner.model.parameters())  # torch makes this list anyway
        # No gradient at all (a micro-batch that GradientAccumulation holds back): nothing to
        # clip, and last_norm keeps the last clipped norm. Stops at the first gradient otherwise.
        if not any(p.grad is not None for p in parameters):
            return
        max_norm = self.max_norm
        if max_norm is not None:
            self.last_norm = torch.nn.utils.clip_grad_norm_(
                parameters, max_norm, self.norm_type, foreach=self.foreach
            )
        elif self.max_value is not None:
            torch.nn.utils.clip_grad_value_(parameters, self.max_value, foreach=self.foreach)

