"""ReduceLROnPlateau: lower the learning rate when a metric has stopped improving."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

from cadence import READ, WRITE, Callback, ConflictError, NoConflict, Unresolvable, on
from cadence.callbacks.monitor import Monitor, check_count
from cadence.callbacks.scheduler import Scheduler, set_value
from cadence.events import EpochBegin, Event, FitBegin, FitEnd
from cadence.phases import Phase, TrainingPhase

__all__ = ["ReduceLROnPlateau"]

log = logging.getLogger(__name__)


class ReduceLROnPlateau(Callback):
    """Multiplies every param group's learning rate by ``factor`` once ``monitor`` has not
    improved for more than ``patience`` epochs, with torch's
    ``torch.optim.lr_scheduler.ReduceLROnPlateau`` semantics, step for step: the same
    arguments, the same decisions, the same rates.

    Args:
        monitor: A key of ``cbstate.metrics``, ``"<phase>/<metric>"`` (checked like
            ``EarlyStopping``'s).
        mode: ``"min"`` (lower is better) or ``"max"``.
        factor: What the rate is multiplied by, ``0 < factor < 1``.
        patience: Epochs without improvement to allow; the next one lowers the rate.
        threshold: How much better than the best a value must be to count, relative
            (``threshold_mode="rel"``: ``best * (1 - threshold)`` in min mode) or absolute
            (``"abs"``: ``best - threshold``).
        threshold_mode: ``"rel"`` or ``"abs"``.
        cooldown: Epochs after a reduction in which bad epochs are not counted.
        min_lr: The lowest rate, one for all groups or a list with one per group.
        eps: A reduction smaller than this is skipped.

    It takes the monitored value when the next training epoch begins (as a hand-written loop
    calls ``step(value)`` after validating) and at ``FitEnd`` the last epoch's: each training
    epoch runs at the rate torch's scheduler gives after stepping with every earlier value, and
    after ``fit`` the rate is torch's after the last step. Deciding then, after every callback
    has handled ``EpochEnd``, it combines in any list order with those that handle ``EpochEnd``
    and read the optimizer (``MixedPrecision``), and a logger sees at ``EpochEnd`` the rate the
    epoch trained at, as Keras logs it. A key that will not exist is a ``MissingStateError``
    when the learner is built (if ``Metrics`` produces the metrics) or when the second epoch
    of a fit begins.

    It declares ``{"optimizer": WRITE, "cbstate.hyperparams": WRITE, "cbstate.metrics":
    READ}``: the rates it sets are in ``cbstate.hyperparams`` (``"lr/group0"``, ...) for
    loggers, which the graph runs after it. With a ``Scheduler`` that schedules ``lr`` it is
    refused (both would set the rate); one that schedules other hyperparameters combines in
    any order.

    State: the best value, the bad epochs and the cooldown left are in ``state_dict`` (the
    rates are the optimizer's, saved with it), so a resumed run lowers the rate where the
    uninterrupted one did. A new fit starts these afresh (``reset``; Keras 3 keeps the best
    value) and keeps the rate the optimizer has, as Keras does; set ``param_group["lr"]`` to
    start from another.

    Example:
        >>> from cadence import Metrics
        >>> from cadence.testing import make_test_learner
        >>> learner = make_test_learner(ReduceLROnPlateau(patience=0, factor=0.5), Metrics(), lr=1.5)
        >>> _ = learner.fit(3)
        >>> learner.cbstate.hyperparams
        {'lr/group0': 0.375}
    """

    state_access = {"optimizer": WRITE, "cbstate.hyperparams": WRITE, "cbstate.metrics": READ}

    def __init__(
        self,
        monitor: str = "valid/loss",
        mode: str = "min",
        *,
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        threshold_mode: str = "rel",
        cooldown: int = 0,
        min_lr: float | Sequence[float] = 0.0,
        eps: float = 1e-8,
    ) -> None:
        self._monitor = Monitor("ReduceLROnPlateau", monitor, mode, 'ReduceLROnPlateau(monitor="{key}")')
        if not (_number(factor) and 0 < factor < 1):
            raise ValueError(
                f"ReduceLROnPlateau(factor={factor!r}): the rate is multiplied by factor, a number "
                f"between 0 and 1 (exclusive), e.g. factor=0.1."
            )
        check_count("ReduceLROnPlateau", "patience", patience, 2)
        check_count("ReduceLROnPlateau", "cooldown", cooldown, 2)
        for name, number in (("threshold", threshold), ("eps", eps)):
            if not (_number(number) and number >= 0):
                raise ValueError(f"ReduceLROnPlateau({name}={number!r}): use a number >= 0.")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(
                f'ReduceLROnPlateau(threshold_mode={threshold_mode!r}): expected "rel" (relative to the '
                f'best value) or "abs" (absolute); write e.g. ReduceLROnPlateau(threshold_mode="rel").'
            )
        lowest = list(min_lr) if isinstance(min_lr, Sequence) and not isinstance(min_lr, str) else [min_lr]
        if not lowest or not all(_number(v) and v >= 0 for v in lowest):
            raise ValueError(
                f"ReduceLROnPlateau(min_lr={min_lr!r}): use a number >= 0, or a list of them with "
                f"one per param group, e.g. min_lr=1e-6 or min_lr=[1e-6, 1e-5]."
            )
        self.monitor, self.mode, self.factor = monitor, mode, float(factor)
        self.patience, self.cooldown = patience, cooldown
        self.threshold, self.threshold_mode, self.eps = float(threshold), threshold_mode, float(eps)
        self.min_lr = min_lr
        self._lowest = [float(v) for v in lowest]
        self._per_group = isinstance(min_lr, Sequence) and not isinstance(min_lr, str)
        self.reset()

    def reset(self) -> None:
        """Forget the best value, the bad epochs and the cooldown (not the rates)."""
        self.best = math.inf if self._monitor.mode == "min" else -math.inf
        self.bad_epochs = 0
        self.cooldown_left = 0

    def init(self, learner: Any) -> None:
        self._monitor.check_planned(learner.cbstate)
        groups = len(learner.optimizer.param_groups)
        if self._per_group and len(self._lowest) != groups:
            raise ValueError(
                f"ReduceLROnPlateau(min_lr={self.min_lr!r}) has {len(self._lowest)} values, but "
                f"{type(learner.optimizer).__name__} has {groups} param group(s); give one per "
                f"group, or a single number for all."
            )
        if "hyperparams" not in learner.cbstate:
            learner.cbstate.hyperparams = {}

    @on(FitBegin)
    def fit_begin(self, event: FitBegin, phase: Phase, learner: Any) -> None:
        self._monitor.start(learner.cbstate.metrics, event.data)
        self._record(learner)

    @on(EpochBegin, phase=TrainingPhase)
    def epoch_begin(self, event: Event, phase: Phase, learner: Any) -> None:
        metrics = learner.cbstate.metrics
        self._monitor.training_began(metrics)
        self._step(self._monitor.new_value(metrics), learner)

    @on(FitEnd)
    def fit_end(self, event: Event, phase: Phase, learner: Any) -> None:
        # The last epoch's value; unchecked, as FitEnd also runs after an error.
        self._step(self._monitor.new_value(learner.cbstate.metrics, check=False), learner)

    def _step(self, value: float | None, learner: Any) -> None:
        """torch's ``ReduceLROnPlateau.step(value)``, in its order; nothing without a value."""
        if value is None:
            return
        if self._better(value):
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            self.bad_epochs = 0  # bad epochs in cooldown are not counted
        if self.bad_epochs > self.patience:
            self._reduce(learner.optimizer.param_groups)
            self.cooldown_left, self.bad_epochs = self.cooldown, 0
            self._record(learner)

    def _better(self, value: float) -> bool:
        best, threshold = self.best, self.threshold
        if self._monitor.mode == "min":
            return value < (best * (1.0 - threshold) if self.threshold_mode == "rel" else best - threshold)
        return value > (best * (threshold + 1.0) if self.threshold_mode == "rel" else best + threshold)

    def _reduce(self, groups: list[dict[str, Any]]) -> None:
        lowest = self._lowest if self._per_group else self._lowest * len(groups)
        if len(lowest) != len(groups):  # torch raises too: a group was added since
            raise ValueError(
                f"ReduceLROnPlateau(min_lr={self.min_lr!r}) has one value per param group the "
                f"optimizer had when the learner was built, {len(lowest)}, but it has {len(groups)} "
                f"now. Add param groups before building the learner, or give one min_lr for all "
                f"groups, e.g. min_lr={min(lowest)!r}."
            )
        for i, group in enumerate(groups):
            old = float(group["lr"])
            new = max(old * self.factor, lowest[i])
            if old - new > self.eps:
                set_value(group, "lr", new)
                log.info("ReduceLROnPlateau: %s has not improved; lr of group %d %.4g -> %.4g.", self.monitor, i, old, new)

    def _record(self, learner: Any) -> None:
        record = learner.cbstate.hyperparams
        for i, group in enumerate(learner.optimizer.param_groups):
            record[f"lr/group{i}"] = float(group["lr"])

    def resolve_conflict(self, other: Callback) -> Any:
        if isinstance(other, ReduceLROnPlateau):
            return Unresolvable()  # both would lower the same rates
        if not isinstance(other, Scheduler):
            return NotImplemented
        if "lr" in other.scheduled:
            raise ConflictError(
                f"ReduceLROnPlateau and {other!r} both set the learning rate: the Scheduler would "
                f"undo every reduction at its next step. Set lr with one of them; a Scheduler can "
                f"still schedule other hyperparameters beside ReduceLROnPlateau, e.g. "
                f"Scheduler(momentum=cosine(0.95, 0.85)) or Scheduler(weight_decay=...)."
            )
        return NoConflict()  # they set different hyperparameters

    def state_dict(self) -> dict[str, Any]:
        """``best``, ``bad_epochs``, ``cooldown_left`` and ``seen`` (values of ``monitor``
        taken); the rates are in the optimizer's state."""
        return {
            "best": self.best, "bad_epochs": self.bad_epochs, "cooldown_left": self.cooldown_left,
            "seen": self._monitor.seen,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""
        self.best = float(state["best"])
        self.bad_epochs, self.cooldown_left = int(state["bad_epochs"]), int(state["cooldown_left"])
        self._monitor.seen = int(state["seen"])


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
