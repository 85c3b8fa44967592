"""EarlyStopping: end training when a metric has stopped improving, and give back the best weights."""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

from cadence import READ, WRITE, Callback, CancelFit, MissingStateError, NoConflict, Unresolvable, on
from cadence.callbacks.accumulation import GradientAccumulation
from cadence.callbacks.monitor import Monitor, check_count
from cadence.events import EpochBegin, EpochEnd, Event, FitBegin, FitEnd
from cadence.phases import Phase, TrainingPhase

__all__ = ["EarlyStopping"]

log = logging.getLogger(__name__)


class EarlyStopping(Callback):
    """Ends ``fit`` with ``CancelFit`` once ``monitor`` has not improved for ``patience``
    epochs (Keras' semantics, ``baseline`` and ``start_from_epoch`` included); the reason says
    so, e.g. ``fit(...).reason``.

    Args:
        monitor: A key of ``cbstate.metrics``, ``"<phase>/<metric>"``, judged when that
            phase's epoch ends. A key that will not exist is a ``MissingStateError`` when the
            learner is built (if ``Metrics`` produces the metrics) or when the first epoch ends.
        mode: ``"min"`` (lower is better) or ``"max"``.
        patience: The number of epochs with no improvement after which training stops (0 stops
            at the first such epoch, like 1).
        min_delta: How much better than the best value a value must be to count as improving.
        baseline: A value to beat, as Keras documents it: an epoch counts as improving only if
            it also beats ``baseline`` (by ``min_delta``), so if none does, training stops
            after ``patience`` epochs. The best epoch is tracked regardless.
        start_from_epoch: The number of first epochs (of the monitored phase, in each fit) not
            judged at all, a warm-up in which no improvement is expected.
        restore_best_weights: At the end of every fit, load the model's weights (its whole
            ``state_dict``, buffers included) from the epoch with the best value.

    The decision is taken at the monitored phase's ``EpochEnd`` (after ``Metrics``, which the
    graph orders first), and training stops at the next training ``EpochBegin``: every
    callback handles the last epoch's ``EpochEnd`` (printers print, checkpoints save), and
    validation still runs after the training epoch that decided. A stop decided in the last
    epoch of a ``fit`` changes nothing. A NaN value counts as no improvement. In a distributed
    fit the metric is reduced over every rank's data, so every rank stops at the same epoch
    with no communication.

    Where Keras 3's code differs from its documentation, this follows the documentation: in
    Keras 3 an epoch that beats the best but not ``baseline`` adds to the epochs waited but
    returns before the stop is checked, so ``[0.12, 0.34, 0.02, 0.71]`` in ``mode="max"``
    with ``patience=2, baseline=0.7`` stops Keras after 3 epochs and this after 2. And Keras 3
    keeps the first judged epoch's weights even when its value is NaN; here only an epoch with
    a number can be the best, so when every value is NaN no weights are restored.

    Best weights: with ``restore_best_weights=True``, the weights are copied to the CPU when an
    epoch improves on the best (into the same buffers each time; nothing happens per batch),
    and loaded back at ``FitEnd`` of every fit in which there was a best epoch, however the
    fit ended: stopped by this callback or another, after its last epoch (as Keras 3 does;
    Keras 2 restored only on a stop), or interrupted (a checkpoint saved on the way out holds
    the weights of its moment). The callback then declares ``{"model": WRITE}``.

    State: the best value and epoch, the epochs waited and judged, the best weights and a stop
    decided but not yet raised are in ``state_dict``, so a resumed run stops where the
    uninterrupted one did and restores the same weights. A new fit starts afresh (``reset``).

    Example:
        >>> from cadence import Metrics
        >>> from cadence.testing import make_test_learner
        >>> learner = make_test_learner(EarlyStopping(patience=2, min_delta=1e-3), Metrics())
        >>> print(learner.fit(50).reason)
        EarlyStopping: valid/loss did not improve by min_delta=0.001 for 2 epochs (best 0.0003844 at epoch 4).
        >>> len(learner.cbstate.metrics.epochs["valid/loss"])
        6
    """

    # The epoch values only (init also reads cbstate.metrics.keys, fixed when the learner is
    # built): they are the same on every rank, so in a distributed fit every rank decides alike
    # and the stop needs no communication (cadence.distributed.agreement).
    state_access = {"cbstate.metrics.epochs": READ}

    def __init__(
        self,
        monitor: str = "valid/loss",
        mode: str = "min",
        *,
        patience: int = 3,
        min_delta: float = 0.0,
        baseline: float | None = None,
        start_from_epoch: int = 0,
        restore_best_weights: bool = False,
    ) -> None:
        self._monitor = Monitor("EarlyStopping", monitor, mode, 'EarlyStopping(monitor="{key}")')
        check_count("EarlyStopping", "patience", patience, 3)
        check_count("EarlyStopping", "start_from_epoch", start_from_epoch, 3)
        if isinstance(min_delta, bool) or not isinstance(min_delta, (int, float)) or not min_delta >= 0:
            raise ValueError(f"EarlyStopping(min_delta={min_delta!r}): use a number >= 0.")
        if baseline is not None and (
            isinstance(baseline, bool) or not isinstance(baseline, (int, float)) or not math.isfinite(baseline)
        ):
            raise ValueError(
                f"EarlyStopping(baseline={baseline!r}): use a finite number, the value to beat, e.g. "
                f"baseline=0.5; or None for no baseline."
            )
        if not isinstance(restore_best_weights, bool):
            raise TypeError(f"EarlyStopping(restore_best_weights=...) is True or False; got {restore_best_weights!r}.")
        self.monitor, self.mode = monitor, mode
        self.patience, self.min_delta, self.start_from_epoch = patience, float(min_delta), start_from_epoch
        self.baseline = None if baseline is None else float(baseline)
        self.restore_best_weights = restore_best_weights
        if restore_best_weights:  # it loads the weights back at FitEnd
            self.state_access = {"cbstate.metrics.epochs": READ, "model": WRITE}
        self.reset()

    @property
    def best_weights(self) -> dict[str, torch.Tensor] | None:
        """The model's ``state_dict`` at the best epoch, on the CPU (None before one, or
        without ``restore_best_weights``)."""
        return self._weights

    def reset(self) -> None:
        """Forget the best value, the counts, the best weights and a pending stop."""
        self.best: float | None = None
        self.best_epoch = 0  # numbered as cbstate.metrics counts the key's values, from 1
        self.wait = 0  # epochs since the last improvement
        self._epochs = 0  # values of monitor taken in this run
        self._weights: dict[str, torch.Tensor] | None = None
        self._took = self._others_ended = False  # in this fit: a value taken, another phase's epoch ended
        self._stop: str | None = None  # the reason, once decided

    def init(self, learner: Any) -> None:
        self._monitor.check_planned(learner.cbstate)

    @on(FitBegin)
    def fit_begin(self, event: FitBegin, phase: Phase, learner: Any) -> None:
        self._monitor.start(learner.cbstate.metrics, event.data)
        self._took = self._others_ended = False

    @on(EpochEnd)
    def epoch_end(self, event: Event, phase: Phase, learner: Any) -> None:
        metrics = learner.cbstate.metrics
        try:
            self._monitor.epoch_ended(phase, metrics)
            if not self._monitor.watches(phase):
                self._others_ended = True
                return
            value = self._monitor.new_value(metrics)
        except MissingStateError:
            self._took = True  # the error says what is wrong; FitEnd need not guess
            raise
        if value is None:  # no new value: the epoch had no batches
            return
        self._epochs += 1
        self._took = True
        if self._epochs <= self.start_from_epoch:
            return
        if not math.isnan(value) and (self.best is None or self._monitor.improves(value, self.best, self.min_delta)):
            self.best, self.best_epoch = value, self._monitor.seen
            if self.restore_best_weights:
                self._keep(learner.model)
            if self.baseline is None or self._monitor.improves(value, self.baseline, self.min_delta):
                self.wait = 0
                return
        self.wait += 1
        if self.wait >= self.patience:
            self._stop = f"EarlyStopping: {self._reason()}."

    def _reason(self) -> str:
        best = "none (no value was a number)"
        if self.best is not None:
            best = f"{self.best:.4g} at epoch {self.best_epoch}"
        epochs = f"{self.wait} epoch{'s' if self.wait > 1 else ''}"
        baseline = self.baseline
        if baseline is not None and (self.best is None or not self._monitor.improves(self.best, baseline, self.min_delta)):
            what = f"did not beat baseline={baseline:g} in {epochs}"
        else:
            what = f"did not improve by min_delta={self.min_delta} for {epochs}"
        restored = "; its weights are restored at the end of fit" if self._weights is not None else ""
        return f"{self.monitor} {what} (best {best}{restored})"

    def _keep(self, model: torch.nn.Module) -> None:
        kept = self._weights
        current = model.state_dict()
        if kept is not None and kept.keys() == current.keys() and all(
            kept[k].shape == v.shape and kept[k].dtype == v.dtype for k, v in current.items()
        ):
            for key, value in current.items():
                kept[key].copy_(value)  # the same CPU buffers every time
        else:
            self._weights = {k: v.detach().to("cpu", copy=True) for k, v in current.items()}

    @on(EpochBegin, phase=TrainingPhase)
    def training_begin(self, event: Event, phase: Phase, learner: Any) -> None:
        if self._stop is not None:
            raise CancelFit(self._stop)

    @on(FitEnd)
    def fit_end(self, event: Event, phase: Phase, learner: Any) -> None:
        if self._weights is not None:
            learner.model.load_state_dict(self._weights)
            log.info("EarlyStopping restored the weights of epoch %d (%s %.4g).", self.best_epoch, self.monitor, self.best)
        if self._others_ended and not self._took:
            log.warning(
                "EarlyStopping saw no new value of %s during this fit; is there data for the %s phase?",
                self.monitor, self._monitor.phase_name,
            )

    def resolve_conflict(self, other: Callback) -> Any:
        # Both restore weights at FitEnd: one would undo the other.
        if isinstance(other, EarlyStopping) and other.restore_best_weights:
            return Unresolvable()
        # Accumulation writes gradients at training EpochBegin/EpochEnd; the weights, which this
        # copies there and writes at FitEnd only, are another part of the model.
        if isinstance(other, GradientAccumulation):
            return NoConflict()
        return NotImplemented

    def state_dict(self) -> dict[str, Any]:
        """The best value, its epoch, the epochs waited since, the values taken (``seen``:
        all so far, ``judged``: in this run), the reason of a stop decided but not yet raised
        (None when there is none), and the best weights (CPU tensors, or None)."""
        return {
            "best": self.best, "best_epoch": self.best_epoch, "wait": self.wait, "seen": self._monitor.seen,
            "judged": self._epochs, "stop": self._stop, "best_weights": self._weights,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned; a pending stop is raised at the next training
        ``EpochBegin``. Without ``restore_best_weights`` the state's best weights are dropped.

        Raises:
            ValueError: with ``restore_best_weights``, a state that has a best value but no
                weights (saved without ``restore_best_weights``): nothing could be restored.
        """
        best, stop = state["best"], state.get("stop")  # no "stop" in older checkpoints
        weights = state.get("best_weights") if self.restore_best_weights else None
        if self.restore_best_weights and best is not None and weights is None:
            raise ValueError(
                f"EarlyStopping(restore_best_weights=True) was given a state with a best value "
                f"({self.monitor} {float(best):.4g} at epoch {state['best_epoch']}) but not its "
                f"weights: it was saved without restore_best_weights, so there are no best weights "
                f"to restore at the end of fit. Resume with EarlyStopping(restore_best_weights=False), "
                f"as the run was saved, or start a new run to get the best weights back."
            )
        self.best = None if best is None else float(best)
        self.best_epoch, self.wait = int(state["best_epoch"]), int(state["wait"])
        self._monitor.seen = int(state["seen"])
        self._epochs = int(state.get("judged", state["seen"]))
        self._stop = None if stop is None else str(stop)
        self._weights = None if weights is None else {str(k): v.to("cpu", copy=True) for k, v in weights.items()}
