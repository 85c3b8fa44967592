"""Reproducing the data order: the generators a DataLoader draws from, and starting an epoch's
iteration at a given batch without loading the batches before it.

A DataLoader with ``shuffle=True`` draws its order from torch's global RNG (or from its
``generator``) when an epoch's iterator starts; a ``DistributedSampler`` from its seed and the
epoch last given to its ``set_epoch``. Restoring those as they were when the epoch started, then
creating the iterator, gives the same order again; ``skip_batches`` then drops the first batches
at the index level, so their samples are never loaded.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset

__all__ = ["data_generators", "loader_options", "sampler_epochs", "set_sampler_epochs", "skip_batches"]


def data_generators(data: object) -> dict[str, torch.Generator]:
    """The ``torch.Generator`` objects a DataLoader draws its order from, by attribute path.

    Example:
        >>> from torch.utils.data import DataLoader
        >>> g = torch.Generator().manual_seed(0)
        >>> list(data_generators(DataLoader(range(8), shuffle=True, generator=g)))  # shared
        ['generator']
        >>> data_generators([1, 2, 3])
        {}
    """
    found: dict[str, torch.Generator] = {}
    if not isinstance(data, DataLoader):
        return found
    candidates = [
        ("generator", data.generator),
        ("sampler.generator", _generator(data.sampler)),
        ("batch_sampler.sampler.generator", _generator(getattr(data.batch_sampler, "sampler", None))),
    ]
    for name, generator in candidates:
        # The sampler usually shares the loader's generator; save each object once.
        if isinstance(generator, torch.Generator) and not any(generator is g for g in found.values()):
            found[name] = generator
    return found


def _generator(sampler: object) -> object:
    return getattr(sampler, "generator", None)


def _epoch_samplers(data: object) -> dict[str, Any]:
    """A DataLoader's samplers that take ``set_epoch`` and keep an int ``epoch``, by path."""
    found: dict[str, Any] = {}
    if not isinstance(data, DataLoader):
        return found
    batch_sampler = data.batch_sampler
    candidates = [
        ("sampler", data.sampler),
        ("batch_sampler", batch_sampler),
        ("batch_sampler.sampler", getattr(batch_sampler, "sampler", None)),
    ]
    for name, sampler in candidates:
        if (
            callable(getattr(sampler, "set_epoch", None))
            and type(getattr(sampler, "epoch", None)) is int
            and not any(sampler is s for s in found.values())
        ):
            found[name] = sampler
    return found


def sampler_epochs(data: object) -> dict[str, int]:
    """The ``epoch`` of each sampler of a DataLoader that takes ``set_epoch`` (a
    ``DistributedSampler`` draws its order from its seed and that epoch), by attribute path.

    Example:
        >>> from torch.utils.data import DataLoader, DistributedSampler
        >>> sampler = DistributedSampler(range(8), num_replicas=1, rank=0)
        >>> sampler.set_epoch(3)
        >>> sampler_epochs(DataLoader(range(8), sampler=sampler))
        {'sampler': 3}
    """
    return {name: sampler.epoch for name, sampler in _epoch_samplers(data).items()}


def set_sampler_epochs(data: object, epochs: Mapping[str, int]) -> None:
    """Give each sampler the epoch ``sampler_epochs`` found, through its ``set_epoch``."""
    for name, sampler in _epoch_samplers(data).items():
        if name in epochs:
            sampler.set_epoch(int(epochs[name]))


class _Remaining:
    """The index batches of ``sampler`` from the ``skip``-th on. Iterating a sampler does not
    load samples. ``at_resume_point`` runs after the skipped ones were drawn (so the sampler
    has drawn its seed as in the original epoch) and before the first remaining one is loaded."""

    def __init__(self, sampler: Iterable[Any], skip: int, at_resume_point: Callable[[], None]) -> None:
        self.sampler, self.skip, self.at_resume_point = sampler, skip, at_resume_point

    def __iter__(self) -> Iterator[Any]:
        # A generator, so that this runs at the first next(), where the DataLoader draws from
        # the sampler in the original epoch too (after drawing its own base seed).
        iterator = iter(self.sampler)
        for _ in itertools.islice(iterator, self.skip):
            pass
        self.at_resume_point()
        yield from iterator

    def __len__(self) -> int:
        return max(len(self.sampler) - self.skip, 0)  # type: ignore[arg-type]


def _skippable(data: object) -> bool:
    # A subclass of DataLoader may build itself differently; it is iterated and skipped.
    return type(data) is DataLoader and not isinstance(data.dataset, IterableDataset)


def skip_batches(data: Iterable[Any], skip: int, at_resume_point: Callable[[], None]) -> Iterator[Any]:
    """Iterate ``data`` from its ``skip``-th batch on, calling ``at_resume_point()`` just before
    the first remaining batch is loaded.

    - A ``torch.utils.data.DataLoader`` over a map-style dataset: its batch sampler's index
      lists are drawn and the first ``skip`` dropped; a DataLoader with the same dataset,
      ``collate_fn``, workers and memory pinning loads the rest. Skipped samples are never
      loaded.
    - A list or tuple: sliced.
    - Anything else (an iterable dataset, a generator): the first ``skip`` batches are drawn
      and thrown away.

    Call it with the RNGs as they were when the epoch's iterator was first created.

    Example:
        >>> from torch.utils.data import DataLoader
        >>> loader = DataLoader(list(range(10)), batch_size=3)
        >>> [b.tolist() for b in skip_batches(loader, 2, lambda: print("resume point"))]
        resume point
        [[6, 7, 8], [9]]
    """
    if isinstance(data, (list, tuple)):
        at_resume_point()
        return iter(data[skip:])
    if _skippable(data):
        assert isinstance(data, DataLoader)
        return iter(_resumed_loader(data, skip, at_resume_point))
    iterator = iter(data)
    for _ in itertools.islice(iterator, skip):
        pass
    at_resume_point()
    return iterator


def loader_options(loader: DataLoader[Any]) -> dict[str, Any]:
    """The options a DataLoader was built with besides its dataset, batching and sampling, to
    build another over the same data (workers, collation, memory pinning, seeding)."""
    return {
        "num_workers": loader.num_workers,
        "collate_fn": loader.collate_fn,
        "pin_memory": loader.pin_memory,
        "timeout": loader.timeout,
        "worker_init_fn": loader.worker_init_fn,
        "multiprocessing_context": loader.multiprocessing_context,
        "generator": loader.generator,
        "prefetch_factor": loader.prefetch_factor,
        "persistent_workers": loader.persistent_workers,
        "in_order": getattr(loader, "in_order", True),
    }


def _resumed_loader(loader: DataLoader[Any], skip: int, at_resume_point: Callable[[], None]) -> DataLoader[Any]:
    common = loader_options(loader)
    if loader.batch_sampler is not None:
        remaining = _Remaining(loader.batch_sampler, skip, at_resume_point)
        return DataLoader(loader.dataset, batch_sampler=remaining, **common)
    # batch_size=None: every index of the sampler is one batch.
    remaining = _Remaining(loader.sampler, skip, at_resume_point)
    return DataLoader(loader.dataset, batch_size=None, sampler=remaining, **common)


def length(data: object) -> int | None:
    """``len(data)``, or None when it has none."""
    if isinstance(data, Sized):
        try:
            return len(data)
        except TypeError:
            return None
    return None
