"""Schedules: hyperparameter values as a function of training progress, for ``Scheduler``.

A schedule is any callable ``schedule(step, total) -> float``: ``step`` counts from 0 in the
scheduler's unit (batches or epochs) and ``total`` is the number of those units in the run. The
built-ins go from ``start`` at step 0 to ``end`` at the last step (``total - 1``); a ``steps``
argument makes one span that many steps instead of the whole run, then hold its last value.

Example:
    >>> from cadence.schedules import cosine, linear_warmup
    >>> schedule = linear_warmup(cosine(0.1, 0.0), steps=2)
    >>> [round(schedule(step, total=6), 3) for step in range(6)]
    [0.0, 0.05, 0.1, 0.075, 0.025, 0.0]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["Schedule", "constant", "cosine", "linear", "linear_warmup", "one_cycle", "step_decay"]


@runtime_checkable
class Schedule(Protocol):
    """A hyperparameter's value at ``step`` (from 0) of a run of ``total`` steps.

    Extending:
        1. Write a function or a class with ``__call__(self, step: int, total: int) -> float``.
        2. Return a plain float (no tensors: the value goes into ``optimizer.param_groups``).
        3. Pass it to ``Scheduler``, e.g. ``Scheduler(lr=lambda step, total: 0.1 / (1 + step))``.
    """

    def __call__(self, step: int, total: int) -> float: ...


def _number(caller: str, name: str, value: object, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"{caller}({name}=...) expects a finite number; got {value!r}.")
    if positive and value <= 0:
        raise ValueError(f"{caller}({name}=...) must be > 0; got {value!r}.")
    return float(value)


def _count(caller: str, value: object, hint: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{caller}(steps=...) expects an int >= 1{hint}; got {value!r}.")
    return value


def _steps(caller: str, value: object) -> int | None:
    return None if value is None else _count(caller, value, " (or None to span the whole run)")


def _progress(step: int, span: int) -> float:
    """Where ``step`` lies in a span of ``span`` steps: 0 at the first, 1 at the last and after."""
    return min(step / max(span - 1, 1), 1.0)


@dataclass(frozen=True, slots=True)
class _Constant:
    value: float

    def __call__(self, step: int, total: int) -> float:
        return self.value

    def __repr__(self) -> str:
        return f"constant({self.value})"


@dataclass(frozen=True, slots=True)
class _Linear:
    start: float
    end: float
    steps: int | None

    def __call__(self, step: int, total: int) -> float:
        t = _progress(step, self.steps or total)
        return self.start + (self.end - self.start) * t

    def __repr__(self) -> str:
        return f"linear({self.start}, {self.end}, steps={self.steps})"


@dataclass(frozen=True, slots=True)
class _Cosine:
    start: float
    end: float
    steps: int | None

    def __call__(self, step: int, total: int) -> float:
        t = _progress(step, self.steps or total)
        return self.end + (self.start - self.end) * (1 + math.cos(math.pi * t)) / 2

    def __repr__(self) -> str:
        return f"cosine({self.start}, {self.end}, steps={self.steps})"


@dataclass(frozen=True, slots=True)
class _StepDecay:
    start: float
    every: int
    gamma: float

    def __call__(self, step: int, total: int) -> float:
        return self.start * self.gamma ** (step // self.every)

    def __repr__(self) -> str:
        return f"step_decay({self.start}, every={self.every}, gamma={self.gamma})"


@dataclass(frozen=True, slots=True)
class _OneCycle:
    peak: float
    start: float
    end: float
    warmup: float

    def __call__(self, step: int, total: int) -> float:
        # torch's OneCycleLR, term for term: the rise ends at step warmup * total - 1 (a float),
        # the fall at total - 1, and the cosine is evaluated in its order of operations.
        turn = float(self.warmup * total) - 1
        if step <= turn:
            begin, span, a, b = 0.0, turn, self.start, self.peak
        else:
            begin, span, a, b = turn, total - 1 - turn, self.peak, self.end
        # span == 0 (a rise of one step) divides by zero in torch; here the peak is that step.
        t = min((step - begin) / span, 1.0) if span > 0 else 1.0
        return b + (a - b) / 2.0 * (math.cos(math.pi * t) + 1)

    def __repr__(self) -> str:
        return f"one_cycle({self.peak}, start={self.start}, end={self.end}, warmup={self.warmup})"


@dataclass(frozen=True, slots=True)
class _Warmup:
    then: Schedule
    steps: int
    start: float

    def __call__(self, step: int, total: int) -> float:
        rest = max(total - self.steps, 1)
        if step >= self.steps:
            return self.then(step - self.steps, rest)
        target = self.then(0, rest)
        return self.start + (target - self.start) * step / self.steps

    def __repr__(self) -> str:
        return f"linear_warmup({self.then!r}, steps={self.steps}, start={self.start})"


def constant(value: float) -> Schedule:
    """The same ``value`` at every step.

    Example:
        >>> constant(0.9)(5, total=10)
        0.9
    """
    return _Constant(_number("constant", "value", value))


def linear(start: float, end: float, *, steps: int | None = None) -> Schedule:
    """Straight from ``start`` (step 0) to ``end`` (the last step of the run, or step
    ``steps - 1``, after which it stays at ``end``).

    Example:
        >>> [linear(1.0, 0.0)(step, total=5) for step in range(5)]
        [1.0, 0.75, 0.5, 0.25, 0.0]
    """
    return _Linear(_number("linear", "start", start), _number("linear", "end", end), _steps("linear", steps))


def cosine(start: float, end: float = 0.0, *, steps: int | None = None) -> Schedule:
    """Cosine annealing from ``start`` (step 0) to ``end`` (the last step of the run, or step
    ``steps - 1``, after which it stays at ``end``).

    Over steps ``0`` to ``total - 1`` (or ``steps - 1``) it equals torch's
    ``CosineAnnealingLR(optimizer, T_max=total - 1, eta_min=end)`` with ``start`` as the
    optimizer's learning rate: torch's ``T_max`` counts the steps between ``start`` and ``end``,
    one fewer than the steps of the span. After the span it holds ``end``, where torch's rises
    again along the cosine.

    Example:
        >>> [round(cosine(0.1, 0.001)(step, total=3), 4) for step in range(3)]
        [0.1, 0.0505, 0.001]
    """
    return _Cosine(_number("cosine", "start", start), _number("cosine", "end", end), _steps("cosine", steps))


def step_decay(start: float, *, every: int, gamma: float = 0.1) -> Schedule:
    """``start`` multiplied by ``gamma`` once every ``every`` steps: at every step, torch's
    ``StepLR(optimizer, step_size=every, gamma=gamma)`` with ``start`` as the optimizer's
    learning rate (up to rounding: torch multiplies step by step, this takes the power).

    Example:
        >>> [step_decay(1.0, every=2, gamma=0.5)(step, total=6) for step in range(6)]
        [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    """
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"step_decay(every=...) expects an int >= 1 (steps between decays); got {every!r}.")
    return _StepDecay(_number("step_decay", "start", start), every, _number("step_decay", "gamma", gamma))


def one_cycle(
    peak: float, *, start: float | None = None, end: float | None = None, warmup: float = 0.3
) -> Schedule:
    """The one-cycle policy: cosine from ``start`` up to ``peak`` over the first ``warmup``
    fraction of the run, then cosine down to ``end`` at the last step.

    At every step of a run of ``total`` steps it equals torch's
    ``OneCycleLR(optimizer, max_lr=peak, total_steps=total, pct_start=warmup,
    div_factor=peak / start, final_div_factor=start / end)`` (cosine annealing, two phases), and
    the defaults are that scheduler's: ``start = peak / 25``, ``end = start / 1e4``. As there,
    the rise ends at step ``warmup * total - 1``, which need not be a whole step, so the peak
    itself may fall between two steps. Two differences, both where torch has no value: past the
    last step the schedule holds ``end`` (torch raises), and when the rise ends at step 0 that
    step is the peak (torch divides by zero). For momentum, which cycles the other way, give
    all three: ``one_cycle(0.85, start=0.95, end=0.95)`` is ``OneCycleLR``'s momentum cycle.

    Example:
        >>> schedule = one_cycle(1.0, start=0.1, end=0.0, warmup=0.5)
        >>> [round(schedule(step, total=5), 3) for step in range(5)]
        [0.1, 0.775, 0.905, 0.345, 0.0]
    """
    peak = _number("one_cycle", "peak", peak)
    first = peak / 25 if start is None else _number("one_cycle", "start", start)
    last = first / 1e4 if end is None else _number("one_cycle", "end", end)
    fraction = _number("one_cycle", "warmup", warmup)
    if not 0 < fraction < 1:
        raise ValueError(
            f"one_cycle(warmup=...) is the fraction of the run spent rising to the peak, strictly "
            f"between 0 and 1, e.g. 0.3; got {warmup!r}."
        )
    return _OneCycle(peak, first, last, fraction)


def linear_warmup(then: Schedule | float, steps: int, *, start: float = 0.0) -> Schedule:
    """Rise linearly from ``start`` to ``then``'s first value over ``steps`` steps, then follow
    ``then`` (a schedule or a constant) over the rest of the run.

    Example:
        >>> [round(linear_warmup(0.1, steps=4)(step, total=6), 4) for step in range(6)]
        [0.0, 0.025, 0.05, 0.075, 0.1, 0.1]
    """
    if not callable(then):
        then = constant(_number("linear_warmup", "then", then))
    return _Warmup(then, _count("linear_warmup", steps), _number("linear_warmup", "start", start))
