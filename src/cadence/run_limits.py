"""Quick runs for debugging: fewer batches per epoch, a fast dev run, overfitting a few batches.

``fit`` takes them as keyword arguments (Lightning's names):

- ``limit_batches=n`` (or ``(n_train, n_valid)``, either None for all): at most that many
  batches per epoch; ``len()`` of the data says so too, so step schedules fit the shorter run.
- ``fast_dev_run=True``: one epoch of one training batch and one validation batch, and nothing
  written: every callback that declares ``writes_files = True`` (``Checkpointer``,
  ``RunFolder``, ``LearningCurves``, every ``LoggerCallback``) is left out of that fit. It
  does train: the model takes one optimizer step.
- ``overfit_batches=n``: the first ``n`` training batches, drawn once, are every epoch's
  training data and its validation data too; a model that cannot drive their loss to zero has
  a bug.

The rule for callbacks that write files: set the class attribute ``writes_files = True``; a
fast dev run then runs without them (their handlers do not run, nothing else changes).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence, Sized
from dataclasses import dataclass
from typing import Any

from cadence.callback import Callback

__all__ = ["LimitedBatches", "RunLimits", "limited"]

Limit = int | None


@dataclass(frozen=True)
class RunLimits:
    """The quick-run options of one ``fit``, checked.

    Example:
        >>> limits = RunLimits.check(limit_batches=(2, None))
        >>> n_epochs, train, valid = limits.apply(3, [1, 2, 3, 4], [5, 6, 7])
        >>> n_epochs, list(train), list(valid)
        (3, [1, 2], [5, 6, 7])
        >>> RunLimits.check(fast_dev_run=True).apply(3, [1, 2], [5, 6])[0]
        1
    """

    train: Limit = None
    valid: Limit = None
    overfit: Limit = None
    fast_dev_run: bool = False

    @classmethod
    def check(
        cls,
        limit_batches: Limit | tuple[Limit, Limit] = None,
        fast_dev_run: bool = False,
        overfit_batches: Limit = None,
        resume: object = None,
    ) -> RunLimits:
        """Validate ``fit``'s quick-run arguments.

        Raises:
            TypeError, ValueError: naming the argument, what it takes and what to write.
        """
        if not isinstance(fast_dev_run, bool):
            raise TypeError(f"fit(fast_dev_run=...) is True or False; got {fast_dev_run!r}.")
        pair = limit_batches if isinstance(limit_batches, tuple) else (limit_batches, limit_batches)
        if len(pair) != 2:
            raise ValueError(
                f"fit(limit_batches=...) is one count for both phases or a pair (train, valid), "
                f"e.g. limit_batches=(100, 20); got {limit_batches!r}."
            )
        train, valid = (_count(f"limit_batches={limit_batches!r}", n) for n in pair)
        overfit = _count(f"overfit_batches={overfit_batches!r}", overfit_batches)
        chosen = [
            name
            for name, used in (
                ("limit_batches", limit_batches is not None),
                ("fast_dev_run", fast_dev_run),
                ("overfit_batches", overfit is not None),
            )
            if used
        ]
        if len(chosen) > 1:
            raise ValueError(
                f"fit() got {' and '.join(chosen)}; use one at a time (fast_dev_run already runs "
                f"one batch of each phase, overfit_batches already fixes the batches)."
            )
        if chosen and resume is not None:
            raise ValueError(
                f"fit({chosen[0]}=..., resume=...): a resumed run continues the whole run; leave "
                f"out {chosen[0]} to resume, or resume to make a quick run."
            )
        return cls(train, valid, overfit, fast_dev_run)

    def apply(self, n_epochs: int, train: Iterable[Any], valid: Iterable[Any] | None) -> tuple[int, Iterable[Any], Iterable[Any] | None]:
        """``(n_epochs, train, valid)`` for the run these limits describe."""
        if self.fast_dev_run:
            return min(n_epochs, 1), limited(train, 1), None if valid is None else limited(valid, 1)
        if self.overfit is not None:
            batches = list(itertools.islice(train, self.overfit))
            if not batches:
                raise ValueError("fit(overfit_batches=...): the training data yields no batches.")
            return n_epochs, batches, batches
        if self.train is not None:
            train = limited(train, self.train)
        if valid is not None and self.valid is not None:
            valid = limited(valid, self.valid)
        return n_epochs, train, valid

    def callbacks(self, callbacks: Sequence[Callback]) -> list[Callback]:
        """The callbacks that run: in a fast dev run, those that write no files."""
        if not self.fast_dev_run:
            return list(callbacks)
        return [cb for cb in callbacks if not cb.writes_files]


class LimitedBatches:
    """At most ``limit`` batches of ``data`` per iteration; other attributes are the data's
    (``.dataset``, ``.sampler``). ``limited()`` makes one, with a ``len()`` when the data has one."""

    def __init__(self, data: Iterable[Any], limit: int) -> None:
        self.data, self.limit = data, limit

    def __iter__(self) -> Iterator[Any]:
        return itertools.islice(self.data, self.limit)

    def __getattr__(self, name: str) -> Any:
        if name in ("data", "limit"):  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self.data, name)

    def __repr__(self) -> str:
        return f"LimitedBatches({self.data!r}, {self.limit})"


class _SizedLimitedBatches(LimitedBatches):
    def __len__(self) -> int:
        return min(len(self.data), self.limit)  # type: ignore[arg-type]


def limited(data: Iterable[Any], limit: int) -> LimitedBatches:
    """``data`` cut to ``limit`` batches per epoch, sized when ``data`` is."""
    return (_SizedLimitedBatches if isinstance(data, Sized) else LimitedBatches)(data, limit)


def _count(argument: str, value: object) -> Limit:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"fit({argument}): batch counts are ints >= 1 (or None for all), e.g. "
            f"limit_batches=10 or limit_batches=(100, None)."
        )
    return value
