"""Scheduler: sets optimizer hyperparameters from schedules, per batch or per epoch."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence, Sized
from typing import Any, Literal

import torch
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from cadence import WRITE, Callback, NoConflict, Unresolvable, on
from cadence.events import BatchBegin, BatchEnd, EpochBegin, EpochEnd, Event, FitBegin
from cadence.phases import Phase, TrainingPhase
from cadence.schedules import Schedule, constant

__all__ = ["Scheduler", "set_value"]

_BETAS = {"beta1": 0, "beta2": 1}
Target = tuple[str, Schedule, int | None]  # (name, schedule, index into "betas" or None)


class Scheduler(Callback):
    """Sets optimizer hyperparameters (``lr``, ``momentum``, ``weight_decay``, ``beta1``,
    ``beta2``, or any other key of the param groups) from schedules, before each training
    batch (``unit="step"``) or training epoch (``unit="epoch"``), so the optimizer step uses
    the scheduled value. Values are recorded in ``cbstate.hyperparams`` as
    ``{"lr/group0": 0.1, ...}`` for loggers.

    A schedule is called as ``schedule(step, total)`` (see ``cadence.schedules``); a number
    means a constant. ``total``, the length of the run in units, is ``n_epochs`` for
    ``unit="epoch"`` and ``n_epochs * len(train data)`` for ``unit="step"``, unless given: it
    depends only on the ``fit`` call, never on the position. The position is the scheduler's
    own counter (it never reads ``cbstate.history``), the units completed so far (past
    ``total``, the built-in schedules hold their last value). A new ``fit`` starts the schedules
    over (``reset``): a second ``fit(2)`` after ``fit(2)`` runs the whole one-cycle again, and a
    torch ``LRScheduler`` is rewound to its state when this ``Scheduler`` was built.
    Batches count as steps, micro-batches of ``GradientAccumulation`` included.

    Checkpoints: ``state_dict()`` holds ``position`` (and ``lr_scheduler``, the torch
    scheduler's own state, when there is one). Nothing at ``FitBegin`` or ``EpochBegin`` resets
    the position or derives the run's length from it, so ``load_state_dict`` restores it
    exactly: ``fit(n_epochs, resume=...)`` continues the run's schedule where the checkpoint
    was taken, in a fresh learner or in the same one (the restore comes after the new fit's
    reset), and a position loaded between fits is where the next fit starts (a fit does not
    reset state loaded since the last one). The optimizer's values at that point come back with
    the optimizer's state.

    Instead of schedules, pass a ``torch.optim.lr_scheduler.LRScheduler`` built on the same
    optimizer: its ``step()`` is called after each batch (or epoch), as torch expects.

    Args:
        schedules: ``{"lr": schedule, ...}``, or a torch ``LRScheduler``; or use keywords.
        unit: ``"step"`` (per training batch) or ``"epoch"``.
        param_groups: Indices of the param groups to set; ``None`` means all.
        total: The length of the run in units; needed for step units when the training data
            has no ``len()`` (checked at ``FitBegin``, before any epoch).
        **named: Schedules by hyperparameter name, e.g. ``lr=cosine(0.1, 0.001)``.

    Example:
        >>> from cadence.schedules import cosine
        >>> from cadence.testing import make_test_learner
        >>> learner = make_test_learner(Scheduler(lr=cosine(0.1, 0.001)), n_batches=4)
        >>> _ = learner.fit(2)
        >>> learner.optimizer.param_groups[0]["lr"], learner.cbstate.hyperparams
        (0.001, {'lr/group0': 0.001})
    """

    state_access = {"optimizer": WRITE, "cbstate.hyperparams": WRITE}
    producer_example = "Scheduler(lr=cosine(0.1, 0.001))"  # Scheduler() has nothing to schedule

    def __init__(
        self,
        schedules: Mapping[str, Schedule | float] | LRScheduler | None = None,
        /,
        *,
        unit: Literal["step", "epoch"] = "step",
        param_groups: Sequence[int] | None = None,
        total: int | None = None,
        **named: Schedule | float,
    ) -> None:
        self._torch: LRScheduler | None = None
        self._torch_start: dict[str, Any] = {}  # its state when given: where a new fit rewinds it
        if isinstance(schedules, LRScheduler):
            _check_torch(schedules, named, param_groups, total)
            self._torch, schedules = schedules, None
            self._torch_start = copy.deepcopy(self._torch.state_dict())
        elif not (schedules is None or isinstance(schedules, Mapping)):
            raise TypeError(
                f"Scheduler expects schedules by name, e.g. Scheduler(lr=cosine(0.1, 0.001)) or "
                f'Scheduler({{"lr": ...}}), or a torch LRScheduler; got {type(schedules).__name__}.'
            )
        if unit not in ("step", "epoch"):
            raise ValueError(f'Scheduler(unit=...) is "step" (per batch) or "epoch"; got {unit!r}.')
        if total is not None and (isinstance(total, bool) or not isinstance(total, int) or total < 1):
            raise ValueError(f"Scheduler(total=...) is the run's length in {unit}s, an int >= 1; got {total!r}.")
        self.unit = unit
        self.total = total
        self.param_groups = _check_groups(param_groups)
        self._targets = _targets(dict(schedules or {}), named) if self._torch is None else ()
        self._per_step = unit == "step"
        self._position = 0
        self._n_epochs = 1
        self._run_total: int | None = total
        self._labels: dict[tuple[str, int], str] = {}

    @property
    def position(self) -> int:
        """Units (training batches or epochs) completed so far."""
        return self._position

    @property
    def scheduled(self) -> frozenset[str]:
        """The names of the hyperparameters it sets (``{"lr"}`` for a torch ``LRScheduler``)."""
        return frozenset(name for name, _ in self._writes())

    def reset(self) -> None:
        """Start the schedules over: position 0, and a torch ``LRScheduler`` back to its state
        when this ``Scheduler`` was built, with the optimizer's rates set to its first ones."""
        if self._torch is not None and self._position:
            self._torch.load_state_dict(copy.deepcopy(self._torch_start))
            for group, lr in zip(self._torch.optimizer.param_groups, self._torch.get_last_lr()):
                set_value(group, "lr", lr)
        self._position = 0

    def init(self, learner: Any) -> None:
        optimizer = learner.optimizer
        if self._torch is not None and self._torch.optimizer is not optimizer:
            raise ValueError(
                "Scheduler was given an LRScheduler built on a different optimizer than the "
                "learner's; build it on learner.optimizer."
            )
        groups = optimizer.param_groups
        for i in self.param_groups or range(len(groups)):
            if i >= len(groups):
                raise ValueError(
                    f"Scheduler(param_groups=...) names group {i}, but {type(optimizer).__name__} "
                    f"has {len(groups)} param group(s), numbered from 0."
                )
            for name, _, index in self._targets:
                key = "betas" if index is not None else name
                if key not in groups[i]:
                    hint = ' (Adam-like optimizers have "beta1"/"beta2" instead)' if name == "momentum" else ""
                    raise ValueError(
                        f"Scheduler schedules {name!r}, which param group {i} of "
                        f"{type(optimizer).__name__} does not have{hint}. It has: "
                        f"{', '.join(k for k in groups[i] if k != 'params')}."
                    )
        if "hyperparams" not in learner.cbstate:
            learner.cbstate.hyperparams = {}

    @on(FitBegin)
    def fit_begin(self, event: FitBegin, phase: Phase, learner: Any) -> None:
        # The run's length, not what is left of it: a resumed fit restores the position after this.
        self._n_epochs = event.n_epochs
        self._run_total = self.total or (None if self._per_step else event.n_epochs)
        if self._run_total is None and event.data is not None:  # checked before any epoch runs
            self._run_total = event.n_epochs * _length(event.data[0])

    @on(EpochBegin, phase=TrainingPhase)
    def epoch_begin(self, event: EpochBegin, phase: Phase, learner: Any) -> None:
        if not self._per_step:
            self._apply(learner)
        elif self._run_total is None:  # a FitBegin fired without its data
            self._run_total = self._n_epochs * _length(event.data)

    @on(BatchBegin, phase=TrainingPhase)
    def batch_begin(self, event: Event, phase: Phase, learner: Any) -> None:
        if self._per_step:
            self._apply(learner)

    @on(BatchEnd, phase=TrainingPhase)
    def batch_end(self, event: Event, phase: Phase, learner: Any) -> None:
        if self._per_step:
            self._advance()

    @on(EpochEnd, phase=TrainingPhase)
    def epoch_end(self, event: Event, phase: Phase, learner: Any) -> None:
        if not self._per_step:
            self._advance()

    def _advance(self) -> None:
        self._position += 1
        if self._torch is not None:
            self._torch.step()

    def _apply(self, learner: Any) -> None:
        groups = learner.optimizer.param_groups
        record = learner.cbstate.hyperparams
        indices = self.param_groups or range(len(groups))
        if self._torch is not None:
            for i in indices:
                record[self._label("lr", i)] = groups[i]["lr"]
            return
        step, total = self._position, self._run_total or 1
        for name, schedule, index in self._targets:
            value = schedule(step, total)
            for i in indices:
                group = groups[i]
                if index is not None:
                    betas = group["betas"]
                    group["betas"] = (value, betas[1]) if index == 0 else (betas[0], value)
                else:
                    set_value(group, name, value)
                record[self._label(name, i)] = value

    def _label(self, name: str, group: int) -> str:
        label = self._labels.get((name, group))
        if label is None:
            label = self._labels[(name, group)] = f"{name}/group{group}"
        return label

    def _writes(self) -> set[tuple[str, int | None]]:
        names = [name for name, _, _ in self._targets] or ["lr"]
        return {(n, g) for n in names for g in (self.param_groups or (None,))}

    def resolve_conflict(self, other: Callback) -> Any:
        if not isinstance(other, Scheduler):
            return NotImplemented
        for name, group in self._writes():
            if any(n == name and (g is None or group is None or g == group) for n, g in other._writes()):
                return Unresolvable()  # both would set the same hyperparameter of a group
        return NoConflict()

    def state_dict(self) -> dict[str, Any]:
        """``{"position": units done}``, plus ``"lr_scheduler"``: the torch scheduler's state."""
        state: dict[str, Any] = {"position": self._position}
        if self._torch is not None:
            state["lr_scheduler"] = self._torch.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned: between fits (the next fit starts there, not
        reset), after ``FitBegin`` or after ``EpochBegin`` (where ``fit(..., resume=...)``
        restores checkpoints).

        Raises:
            ValueError: ``state`` has other keys than ``state_dict`` gives for this Scheduler.
        """
        expected = {"position"} | ({"lr_scheduler"} if self._torch is not None else set())
        if set(state) != expected:
            raise ValueError(
                f"Scheduler.load_state_dict expects the keys {sorted(expected)} (what state_dict "
                f"returned for the same kind of Scheduler); got {sorted(state)}."
            )
        self._position = int(state["position"])
        if self._torch is not None:
            self._torch.load_state_dict(state["lr_scheduler"])

    def __repr__(self) -> str:
        what = repr(self._torch) if self._torch is not None else ", ".join(f"{n}={s!r}" for n, s, _ in self._targets)
        return f"Scheduler({what}, unit={self.unit!r})"


def set_value(group: dict[str, Any], name: str, value: float | torch.Tensor) -> None:
    """Set ``group[name]`` to ``value``; a tensor there (the ``lr`` of capturable or fused
    optimizers) is filled, so it stays a tensor, as those optimizers need."""
    current = group[name]
    if isinstance(current, torch.Tensor):
        current.fill_(value)
    else:
        group[name] = value


def _check_torch(scheduler: LRScheduler, named: Mapping[str, object], groups: object, total: object) -> None:
    if isinstance(scheduler, ReduceLROnPlateau):
        raise TypeError(
            "Scheduler does not drive torch's ReduceLROnPlateau, which needs a metric at each "
            "step; use cadence's callback with the same arguments instead, e.g. "
            "ReduceLROnPlateau(monitor=\"valid/loss\", factor=0.1, patience=10) from "
            "cadence.callbacks.plateau (or cadence)."
        )
    if named or groups is not None or total is not None:
        raise TypeError(
            "Scheduler(lr_scheduler) takes no schedules, param_groups or total: the LRScheduler "
            "already sets every group's lr. Use a second Scheduler for other hyperparameters."
        )


def _check_groups(groups: Sequence[int] | None) -> tuple[int, ...] | None:
    if groups is None:
        return None
    if isinstance(groups, (str, bytes)) or not isinstance(groups, Sequence):
        raise TypeError(f"Scheduler(param_groups=...) expects a list of group indices, e.g. [0, 1]; got {groups!r}.")
    checked = tuple(groups)
    bad = [g for g in checked if isinstance(g, bool) or not isinstance(g, int) or g < 0]
    if bad or not checked or len(set(checked)) != len(checked):
        raise ValueError(
            f"Scheduler(param_groups=...) expects distinct group indices >= 0, e.g. [0, 1], or None "
            f"for all groups; got {groups!r}."
        )
    return checked


def _targets(schedules: dict[str, Any], named: Mapping[str, Any]) -> tuple[Target, ...]:
    twice = sorted(set(schedules) & set(named))
    if twice:
        raise ValueError(f"Scheduler was given a schedule for {', '.join(twice)} twice; give each once.")
    schedules.update(named)
    if not schedules:
        raise ValueError("Scheduler has nothing to schedule; e.g. Scheduler(lr=cosine(0.1, 0.001)).")
    targets: list[Target] = []
    for name, schedule in schedules.items():
        if not isinstance(name, str) or not name.isidentifier() or name in ("params", "betas"):
            fix = ' Schedule "beta1" and "beta2" separately.' if name == "betas" else ""
            raise ValueError(f"Scheduler cannot schedule {name!r}; name a param-group key such as 'lr'.{fix}")
        if isinstance(schedule, (int, float)) and not isinstance(schedule, bool) and math.isfinite(schedule):
            schedule = constant(schedule)
        elif not callable(schedule):
            raise TypeError(
                f"Scheduler({name}=...) expects a schedule, a callable (step, total) -> float such "
                f"as cadence.schedules.cosine(0.1, 0.001), or a number; got {schedule!r}."
            )
        targets.append((name, schedule, _BETAS.get(name)))
    return tuple(targets)


def _length(data: object) -> int:
    if not isinstance(data, Sized):
        raise TypeError(
            "Scheduler(unit='step') cannot tell how many batches the run has: the training data "
            "has no len(). Pass Scheduler(..., total=N), N the number of batches the schedules span."
        )
    return len(data)
