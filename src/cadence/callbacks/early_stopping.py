"""EarlyStopping: end training when a metric has stopped improving."""

from __future__ import annotations

import difflib
import logging
import math
from typing import Any

from cadence import READ, Callback, CancelFit, MissingStateError, on
from cadence.events import EpochBegin, EpochEnd, Event, FitBegin, FitEnd
from cadence.phases import Phase, TrainingPhase

__all__ = ["EarlyStopping"]

log = logging.getLogger(__name__)


class EarlyStopping(Callback):
    """Ends ``fit`` with ``CancelFit`` once ``monitor`` has not improved for ``patience``
    epochs; the reason says so, e.g. ``fit(...).reason``.

    Args:
        monitor: A key of ``cbstate.metrics``, ``"<phase>/<metric>"``. It is checked when that
            phase's epoch ends, and must be a key that ``Metrics`` produces: a key nothing
            produces is a ``MissingStateError`` when the learner is built.
        mode: ``"min"`` (lower is better) or ``"max"``.
        patience: The number of epochs with no improvement after which training stops (0 stops
            at the first such epoch, like 1).
        min_delta: How much better than the best value a value must be to count as improving.

    The decision is taken at the monitored phase's ``EpochEnd`` (after ``Metrics``, which the
    graph orders first), and training stops at the next training ``EpochBegin``: every
    callback handles the last epoch's ``EpochEnd`` (printers print, checkpoints save), and
    validation still runs after the training epoch that decided. A stop decided in the last
    epoch of a ``fit`` changes nothing. Counters persist across ``fit`` calls and through
    ``state_dict``, and so does a pending stop: a run resumed from a checkpoint taken after
    the deciding epoch stops where the uninterrupted run did. A NaN value counts as no
    improvement.

    Example:
        >>> from cadence import Metrics
        >>> from cadence.testing import make_test_learner
        >>> learner = make_test_learner(EarlyStopping(patience=2, min_delta=1e-3), Metrics())
        >>> print(learner.fit(50).reason)
        EarlyStopping: valid/loss did not improve by min_delta=0.001 for 2 epochs (best 0.0003844 at epoch 4).
        >>> len(learner.cbstate.metrics.epochs["valid/loss"])
        6
    """

    state_access = {"cbstate.metrics": READ}

    def __init__(
        self, monitor: str = "valid/loss", mode: str = "min", *, patience: int = 3, min_delta: float = 0.0
    ) -> None:
        phase_name, _, metric = monitor.partition("/") if isinstance(monitor, str) else ("", "", "")
        if not (phase_name and metric):
            raise ValueError(
                f'EarlyStopping(monitor={monitor!r}): keys are "<phase>/<metric>", e.g. monitor="valid/loss".'
            )
        if mode not in ("min", "max"):
            raise ValueError(f'EarlyStopping(mode={mode!r}): use "min" (lower is better) or "max".')
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise ValueError(f"EarlyStopping(patience={patience!r}): use an int >= 0.")
        if isinstance(min_delta, bool) or not isinstance(min_delta, (int, float)) or not min_delta >= 0:
            raise ValueError(f"EarlyStopping(min_delta={min_delta!r}): use a number >= 0.")
        self.monitor, self.mode, self.patience, self.min_delta = monitor, mode, patience, float(min_delta)
        self._phase_name = phase_name
        self.best: float | None = None
        self.best_epoch = 0
        self.wait = 0  # epochs since the best one
        self._seen = 0  # values of monitor already judged
        self._judged = self._others_ended = False  # in this fit: a value judged, another phase's epoch ended
        self._stop: str | None = None  # the reason, once decided

    def init(self, learner: Any) -> None:
        keys = getattr(learner.cbstate.metrics, "keys", None)
        if not isinstance(keys, (set, frozenset)) or not keys or self.monitor in keys:
            return  # found, or a producer that plans no keys: nothing to check against
        close = difflib.get_close_matches(self.monitor, sorted(keys), n=1)
        raise MissingStateError(
            f"EarlyStopping monitors {self.monitor!r}, but no callback produces it; cbstate.metrics "
            f"will have {', '.join(sorted(keys))}.\n"
            + (f'Did you mean EarlyStopping(monitor="{close[0]}")? ' if close else "")
            + f"Monitor one of those keys, or add the metric to Metrics, e.g. "
            f"Metrics(MetricSpec(my_metric, phases=\"{self._phase_name}\"))."
        )

    @on(FitBegin)
    def fit_begin(self, event: Event, phase: Phase, learner: Any) -> None:
        self._stop = None
        self._judged = self._others_ended = False

    @on(EpochEnd)
    def epoch_end(self, event: Event, phase: Phase, learner: Any) -> None:
        if phase.name != self._phase_name:
            self._others_ended = True
            return
        values = learner.cbstate.metrics.epochs.get(self.monitor, [])
        if len(values) <= self._seen:  # no new value: the epoch had no batches
            return
        self._seen, self._judged = len(values), True
        value = values[-1]
        if not math.isnan(value) and (self.best is None or self._improves(value, self.best)):
            self.best, self.best_epoch, self.wait = value, len(values), 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            best = "none (no value was a number)"
            if self.best is not None:
                best = f"{self.best:.4g} at epoch {self.best_epoch}"
            self._stop = (
                f"EarlyStopping: {self.monitor} did not improve by min_delta={self.min_delta} for "
                f"{self.wait} epoch{'s' if self.wait > 1 else ''} (best {best})."
            )

    def _improves(self, value: float, best: float) -> bool:
        if self.mode == "min":
            return value < best - self.min_delta
        return value > best + self.min_delta

    @on(EpochBegin, phase=TrainingPhase)
    def training_begin(self, event: Event, phase: Phase, learner: Any) -> None:
        if self._stop is not None:
            raise CancelFit(self._stop)

    @on(FitEnd)
    def fit_end(self, event: Event, phase: Phase, learner: Any) -> None:
        if self._others_ended and not self._judged:
            log.warning(
                "EarlyStopping saw no new value of %s during this fit; is there data for the %s phase?",
                self.monitor, self._phase_name,
            )

    def state_dict(self) -> dict[str, Any]:
        """The best value, its epoch, the epochs waited since, the values judged, and the
        reason of a stop decided but not yet raised (None when there is none)."""
        return {
            "best": self.best, "best_epoch": self.best_epoch, "wait": self.wait, "seen": self._seen, "stop": self._stop,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned; a pending stop is raised at the next training
        ``EpochBegin``. (Resuming restores after ``FitBegin``, which clears the stop of a
        previous ``fit``.)"""
        best, stop = state["best"], state.get("stop")  # no "stop" in older checkpoints
        self.best = None if best is None else float(best)
        self.best_epoch, self.wait = int(state["best_epoch"]), int(state["wait"])
        self._seen = int(state["seen"])
        self._stop = None if stop is None else str(stop)
