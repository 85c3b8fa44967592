"""Quick runs for debugging: fewer batches per epoch, a fast dev run, overfitting a few batches.

``fit`` takes them as keyword arguments (Lightning's names):

- ``limit_batches=n`` (or ``(n_train, n_valid)``, either None for all): at most that many
  batches per epoch; ``len()`` of the data says so too, so step schedules fit the shorter run.
- ``fast_dev_run=True``: one epoch of one training batch and one validation batch, and nothing
  written: every callback that declares ``writes_files = True`` (``Checkpointer``,
  ``RunFolder``, ``LearningCurves``, every ``LoggerCallback``) is left out of that fit. It
  does train: the model takes one optimizer step, and ``Recorder`` and ``Metrics`` count its
  step and epoch like any other (a later fit of the learner goes on from them). Unlike
  Lightning's, it keeps ``EarlyStopping``.
- ``overfit_batches=n``: Lightning's: every epoch trains on the first ``n`` training batches
  and validates on the first ``n`` validation batches (none without validation data), in order:
  a shuffling ``DataLoader`` is rebuilt without shuffling (a warning says so; a sampler or batch
  sampler of your own is used as it is), and a one-shot iterator is drawn from once. A model that
  cannot drive their loss to zero has a bug.

Every count is a number of batches; Lightning's fractions (``limit_train_batches=0.1``) are not
accepted.

The rule for callbacks that write files: set the class attribute ``writes_files = True``; a
fast dev run then runs without them (their handlers do not run, nothing else changes), and
without the callbacks that read a ``cbstate`` entry only those write (a callback reading
``cbstate.run`` goes with ``RunFolder``); a log line names them all.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import logging
from collections.abc import Iterable, Iterator, Sequence, Sized
from dataclasses import dataclass
from typing import Any

from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
)

from cadence.access import overlaps
from cadence.callback import Callback, declared_access
from cadence.checkpointing.replay import loader_options
from cadence.graph.installed import InstalledCallbacks

__all__ = ["LimitedBatches", "RunLimits", "limited", "running"]

log = logging.getLogger(__name__)

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
            first = _first_in_order(train, self.overfit, "training")
            return n_epochs, first, None if valid is None else _first_in_order(valid, self.overfit, "validation")
        if self.train is not None:
            train = limited(train, self.train)
        if valid is not None and self.valid is not None:
            valid = limited(valid, self.valid)
        return n_epochs, train, valid

    def callbacks(self, callbacks: Sequence[Callback]) -> list[Callback]:
        """The callbacks that run: in a fast dev run, those that write no files, less those
        that read a ``cbstate`` entry only a left-out callback writes (``cbstate.run`` without
        ``RunFolder``); one log line names what is left out."""
        if not self.fast_dev_run:
            return list(callbacks)
        writers = [cb for cb in callbacks if cb.writes_files]
        kept = [cb for cb in callbacks if not cb.writes_files]
        dependents = _dependents(kept, writers)
        if writers or dependents:
            names = ", ".join(type(cb).__name__ for cb in writers)
            if dependents:
                log.warning(
                    "fast_dev_run: this fit runs without %s (they write files) and without %s.",
                    names, "; ".join(f"{type(cb).__name__} ({why})" for cb, why in dependents.values()),
                )
            else:
                log.info("fast_dev_run: this fit runs without %s (they write files).", names)
        return [cb for cb in kept if id(cb) not in dependents]


def _dependents(kept: list[Callback], left_out: list[Callback]) -> dict[int, tuple[Callback, str]]:
    """The callbacks of ``kept`` that read a ``cbstate`` entry which, once ``left_out`` and
    these are gone, nothing writes; by id, with the reason."""
    declared = {id(cb): declared_access(cb) for cb in (*kept, *left_out)}
    gone = list(left_out)
    found: dict[int, tuple[Callback, str]] = {}
    changed = True
    while changed:
        changed = False
        running = [cb for cb in kept if id(cb) not in found]
        for cb in running:
            for path in declared[id(cb)].reads:
                if path[0] != "cbstate" or len(path) == 1:
                    continue
                if any(overlaps(path, w) for other in running for w in declared[id(other)].writes):
                    continue
                producers = [type(o).__name__ for o in gone if any(overlaps(path, w) for w in declared[id(o)].writes)]
                if producers:
                    found[id(cb)] = (cb, f"reads {'.'.join(path)}, which only {', '.join(producers)} writes")
                    gone.append(cb)
                    changed = True
                    break
    return found


def _first_in_order(data: Iterable[Any], n: int, which: str) -> Iterable[Any]:
    """The first ``n`` batches of ``data`` in order, every epoch (Lightning's
    ``overfit_batches``): a shuffling DataLoader is rebuilt without shuffling, a one-shot
    iterator is drawn from once."""
    if isinstance(data, Iterator):
        batches = list(itertools.islice(data, n))
        if not batches:
            raise ValueError(f"fit(overfit_batches=...): the {which} data yields no batches.")
        return batches
    if isinstance(data, Sized) and len(data) == 0:
        raise ValueError(f"fit(overfit_batches=...): the {which} data yields no batches.")
    return limited(_in_order(data, which), n)


def _in_order(data: Iterable[Any], which: str) -> Iterable[Any]:
    if type(data) is not DataLoader or isinstance(data.dataset, IterableDataset):
        return data
    if data.batch_sampler is not None and type(data.batch_sampler) is not BatchSampler:
        return data  # a batch sampler of the user's own: its order is its own
    given = data.sampler
    sampler: Sampler[Any]
    if isinstance(given, RandomSampler):
        sampler = SequentialSampler(data.dataset)  # type: ignore[arg-type]
    elif isinstance(given, DistributedSampler) and given.shuffle:  # a distributed fit's shard
        unshuffled = copy.copy(given)
        unshuffled.shuffle = False
        sampler = unshuffled
    else:
        return data
    log.warning(
        "fit(overfit_batches=...): the %s DataLoader shuffles; this fit takes its first batches in "
        "order, without shuffling, as Lightning does.", which,
    )
    return DataLoader(data.dataset, batch_size=data.batch_size, sampler=sampler, drop_last=data.drop_last, **loader_options(data))


@contextlib.contextmanager
def running(installed: InstalledCallbacks, callbacks: Sequence[Callback]) -> Iterator[None]:
    """Run with only ``callbacks`` of those installed (a fast dev run leaves some out), and
    put the plans back afterwards, without building (nor checking) them again."""
    if len(callbacks) == len(installed.callbacks):
        yield
        return
    saved = installed.saved()
    installed.install(callbacks, joining=[])
    try:
        yield
    finally:
        installed.restore(saved)


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
