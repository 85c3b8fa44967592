"""Metrics: the loss (and later other metrics) per step and per epoch, in ``cbstate.metrics``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from cadence import READ, WRITE, Callback, on
from cadence.events import BatchEnd, EpochBegin, EpochEnd, Event
from cadence.phases import Phase

__all__ = ["Metrics", "MetricValues"]


@dataclass(slots=True)
class MetricValues:
    """What ``Metrics`` writes to ``cbstate.metrics``; keys are ``"<phase name>/<metric>"``.

    Attributes:
        step: The latest step's values, as tensors left on their device (no sync per batch);
            call ``float()`` on one when you need the number.
        epochs: Every epoch's value, per key, as floats.
    """

    step: dict[str, torch.Tensor] = field(default_factory=dict)
    epochs: dict[str, list[float]] = field(default_factory=dict)

    def last(self, key: str) -> float:
        """The latest epoch value of ``key``.

        Raises:
            KeyError: naming the keys that exist.
        """
        values = self.epochs.get(key)
        if not values:
            raise KeyError(f"No epoch value for {key!r} yet; known keys: {sorted(self.epochs) or 'none'}.")
        return values[-1]


class Metrics(Callback):
    """Tracks the loss: the latest step's value and each epoch's value, weighted by batch size
    (exact for mean-reduced losses), under ``"<phase name>/loss"`` in ``cbstate.metrics``.

    The epoch sum is accumulated on the loss's device and read once, at ``EpochEnd``.

    Example:
        >>> from cadence.testing import make_test_learner
        >>> learner = make_test_learner(Metrics())
        >>> _ = learner.fit(3)
        >>> len(learner.cbstate.metrics.epochs["train/loss"])
        3
    """

    state_access = {"batch.loss": READ, "batch.y": READ, "cbstate.metrics": WRITE}

    def __init__(self) -> None:
        self._total: torch.Tensor | None = None
        self._count = 0
        self._keys: dict[type[Phase], str] = {}

    def init(self, learner: Any) -> None:
        if "metrics" not in learner.cbstate:
            learner.cbstate.metrics = MetricValues()

    def _key(self, phase: Phase) -> str:
        key = self._keys.get(type(phase))
        if key is None:
            key = self._keys[type(phase)] = f"{phase.name}/loss"
        return key

    @on(EpochBegin)
    def epoch_begin(self, event: Event, phase: Phase, learner: Any) -> None:
        self._total = None
        self._count = 0

    @on(BatchEnd)
    def batch_end(self, event: Event, phase: Phase, learner: Any) -> None:
        batch = learner.batch
        loss = batch.loss.detach()
        size = len(batch.y)
        if self._total is None:
            self._total = torch.zeros((), dtype=torch.float64, device=loss.device)
        self._total.add_(loss, alpha=size)
        self._count += size
        learner.cbstate.metrics.step[self._key(phase)] = loss

    @on(EpochEnd)
    def epoch_end(self, event: Event, phase: Phase, learner: Any) -> None:
        if self._total is None or self._count == 0:
            return
        value = float(self._total) / self._count
        learner.cbstate.metrics.epochs.setdefault(self._key(phase), []).append(value)
