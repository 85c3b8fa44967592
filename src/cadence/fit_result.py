"""What ``Learner.fit`` returns: the epoch metrics of the run, and how it stopped."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cadence.errors import CancelFit

__all__ = ["FitResult", "metric_lengths", "fit_result"]


@dataclass(frozen=True, repr=False)
class FitResult:
    """The outcome of one ``fit``, like Keras' ``History``.

    Attributes:
        history: The epoch values ``Metrics`` recorded during this fit, per key
            (``{"train/loss": [0.9, 0.4], "valid/loss": [...]}``); a resumed fit's history
            starts where the checkpoint's run did. Empty without a ``Metrics`` callback.
        stopped: The ``CancelFit`` that ended training early, or None when every epoch ran.

    Example:
        >>> from cadence import Metrics
        >>> from cadence.testing import make_test_learner
        >>> result = make_test_learner(Metrics()).fit(2)
        >>> sorted(result.history), len(result.history["valid/loss"]), result.reason
        (['train/loss', 'valid/loss'], 2, None)
        >>> result  # short, like Keras' History: the values are in result.history
        FitResult(keys=['train/loss', 'valid/loss'], epochs=2, stopped=None)
    """

    history: dict[str, list[float]] = field(default_factory=dict)
    stopped: CancelFit | None = None

    @property
    def reason(self) -> str | None:
        """Why training stopped early (``stopped.reason``), or None when every epoch ran."""
        return None if self.stopped is None else self.stopped.reason

    def __repr__(self) -> str:
        epochs = max((len(values) for values in self.history.values()), default=0)
        return f"FitResult(keys={list(self.history)!r}, epochs={epochs}, stopped={self.reason!r})"


def metric_lengths(cbstate: Any) -> dict[str, int]:
    """How many epoch values each ``cbstate.metrics`` key has now: where this fit's begin."""
    return {key: len(values) for key, values in _epochs(cbstate).items()}


def fit_result(cbstate: Any, since: dict[str, int], stopped: CancelFit | None) -> FitResult:
    """The ``FitResult`` of a fit that began when the keys had ``since`` values."""
    history = {}
    for key, values in _epochs(cbstate).items():
        new = values[since.get(key, 0) :]
        if new:
            history[key] = [float(v) for v in new]
    return FitResult(history, stopped)


def _epochs(cbstate: Any) -> dict[str, list[float]]:
    # cbstate.metrics is whatever the callback that writes it made; Metrics' has ``epochs``.
    metrics = cbstate.entries().get("metrics")
    epochs = getattr(metrics, "epochs", None)
    return epochs if isinstance(epochs, dict) else {}
