"""Each rank's share of the data.

- A ``DataLoader`` over a map-style dataset (shuffled or not) is rebuilt with a
  ``ShardSampler``: rank ``r`` of ``W`` takes positions ``r, r + W, ...`` of one permutation of
  the dataset drawn from ``seed + epoch`` (the same on every rank, and for every world size),
  so that ``W`` ranks with batch size ``B`` draw, at each step, the samples one process with
  batch size ``W * B`` draws. For training the shards are padded, as ``DistributedSampler``
  pads, so that every rank runs the same number of steps (DDP's gradient all-reduce needs
  that); at most one sample per rank repeats, in the epoch's last batch, and ``Metrics`` leaves
  it out (``padded_batch``). Validation shards are not padded.
- A subclass of ``DataLoader`` cannot be rebuilt (its constructor is its own). With a
  ``DistributedSampler`` for this rank (``num_replicas=W, rank=r``) it is this rank's shard
  already, used as it is (``Metrics`` leaves out that sampler's padding too); with
  ``shuffle=False`` it is sharded by whole batches, as below (one order on every rank). A
  subclass that shuffles is refused with the fix: each rank would shuffle with its own random
  state, and whole-batch shards of different orders hold some samples twice, others never.
- A custom sampler or batch sampler is refused with the fix, for the same reason.
- Any other iterable (a list of batches, a generator, an iterable dataset) is sharded by whole
  batches: rank ``r`` takes batches ``r, r + W, ...``. Every rank must iterate the same
  batches. In training an incomplete last round of fewer than ``W`` batches is dropped, so that
  the ranks run the same number of steps.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sized
from typing import Any

import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
)

from cadence.checkpointing.replay import loader_options
from cadence.errors import DistributedError

__all__ = ["ShardSampler", "ShardedBatches", "batch_size_of", "leading", "padded_batch", "shard"]


class ShardSampler(DistributedSampler[Any]):
    """Rank ``rank``'s share of ``dataset``: positions ``rank, rank + num_replicas, ...`` of the
    dataset's order (a permutation from ``seed + epoch`` when ``shuffle``; ``set_epoch`` picks
    the epoch). With ``pad`` (training) every rank gets ``ceil(n / num_replicas)`` indices, the
    last one of the short ranks repeating the permutation's first (as ``DistributedSampler``);
    without it, no index repeats and the shards differ in length by at most one.

    Attributes:
        real_samples: How many of this rank's indices are not padding.

    Example:
        >>> shards = [ShardSampler(range(5), 2, r, shuffle=False, seed=0, pad=True) for r in (0, 1)]
        >>> [list(s) for s in shards], [s.real_samples for s in shards]
        ([[0, 2, 4], [1, 3, 0]], [3, 2])
        >>> [list(ShardSampler(range(5), 2, r, shuffle=False, seed=0, pad=False)) for r in (0, 1)]
        [[0, 2, 4], [1, 3]]
    """

    def __init__(self, dataset: Any, num_replicas: int, rank: int, *, shuffle: bool, seed: int, pad: bool) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.pad = pad
        self.real_samples = len(range(rank, len(dataset), num_replicas))
        if not pad:
            self.num_samples = self.real_samples

    def __iter__(self) -> Iterator[int]:
        if self.pad:
            return super().__iter__()
        n = len(self.dataset)  # type: ignore[arg-type]
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(self.seed + self.epoch)
            order: list[int] = torch.randperm(n, generator=generator).tolist()
        else:
            order = list(range(n))
        return iter(order[self.rank : n : self.num_replicas])


class ShardedBatches:
    """Rank ``rank``'s batches of ``data``: batches ``rank, rank + world_size, ...``. With
    ``complete_rounds`` (training), a last round of fewer than ``world_size`` batches is
    dropped, so that every rank yields as many. Attribute reads go through to ``data``."""

    def __init__(self, data: Iterable[Any], rank: int, world_size: int, *, complete_rounds: bool) -> None:
        self.data, self.rank, self.world_size, self.complete_rounds = data, rank, world_size, complete_rounds

    def __iter__(self) -> Iterator[Any]:
        rank, world = self.rank, self.world_size
        if not self.complete_rounds:
            yield from itertools.islice(self.data, rank, None, world)
            return
        mine: Any = None
        for index, batch in enumerate(self.data):
            position = index % world
            if position == rank:
                mine = batch
            if position == world - 1:
                yield mine
                mine = None

    def __len__(self) -> int:
        if not isinstance(self.data, Sized):
            raise TypeError(f"{type(self.data).__name__} has no len()")
        n = len(self.data)
        return n // self.world_size if self.complete_rounds else len(range(self.rank, n, self.world_size))

    def __getattr__(self, name: str) -> Any:
        if name == "data":  # not set yet (copy, pickle)
            raise AttributeError(name)
        return getattr(self.data, name)

    def __repr__(self) -> str:
        return f"{self.data!r} (rank {self.rank} of {self.world_size})"


def shard(data: Iterable[Any], rank: int, world_size: int, *, training: bool, seed: int) -> Iterable[Any]:
    """Rank ``rank``'s share of ``data`` (see the module docstring).

    Raises:
        DistributedError: a DataLoader whose sampler cannot be sharded (a custom sampler or
            batch sampler, a shuffling DataLoader subclass, a DistributedSampler for another
            rank), with the fix.
    """
    if not isinstance(data, DataLoader) or isinstance(data.dataset, IterableDataset):
        return ShardedBatches(data, rank, world_size, complete_rounds=training)
    order = _order(data)
    if type(data) is DataLoader:
        shuffle = order == "shuffled" or (order == "distributed" and bool(data.sampler.shuffle))  # type: ignore[attr-defined]
        sampler = ShardSampler(data.dataset, world_size, rank, shuffle=shuffle, seed=seed, pad=training)
        return DataLoader(
            data.dataset, batch_size=data.batch_size, sampler=sampler, drop_last=data.drop_last, **loader_options(data)
        )
    name = type(data).__name__
    if order == "distributed":
        given: DistributedSampler[Any] = data.sampler  # type: ignore[assignment]
        if (given.num_replicas, given.rank) != (world_size, rank):
            raise DistributedError(
                f"The training or validation {name} has a DistributedSampler(num_replicas={given.num_replicas}, "
                f"rank={given.rank}), but this process is rank {rank} of {world_size}. Build it with "
                f"DistributedSampler(dataset, num_replicas=cadence.distributed.world_size(), "
                f"rank=cadence.distributed.rank()), or leave the sampler out and pass a plain DataLoader."
            )
        return data  # this rank's shard already; DataParallel sets its epoch
    if order == "sequential":
        return ShardedBatches(data, rank, world_size, complete_rounds=training)
    raise DistributedError(
        f"DataParallel cannot shard the shuffling {name}: a DataLoader subclass is not rebuilt with a "
        f"sampler per rank, and sharding it by whole batches needs one order on every rank, while each "
        f"rank would shuffle with its own random state (some samples twice, others never). Give it "
        f"sampler=DistributedSampler(dataset, shuffle=True) (DataParallel picks each rank's part and "
        f"sets the epoch), pass a plain DataLoader(dataset, batch_size=..., shuffle=True), or shard "
        f"the data yourself and pass DataParallel(shard=False)."
    )


def _order(loader: DataLoader[Any]) -> str:
    """How ``loader`` orders its samples: ``"shuffled"``, ``"sequential"`` or ``"distributed"``
    (a ``DistributedSampler``); any other sampler or batch sampler is refused."""
    sampler, batches = loader.sampler, loader.batch_sampler
    own_batches = batches is not None and (loader.batch_size is None or type(batches) is not BatchSampler)
    if not own_batches:
        if isinstance(sampler, DistributedSampler):
            return "distributed"
        if type(sampler) is RandomSampler and not sampler.replacement and sampler.num_samples == len(loader.dataset):  # type: ignore[arg-type]
            return "shuffled"
        if type(sampler) is SequentialSampler:
            return "sequential"
    what = f"batch sampler {type(batches).__name__}" if own_batches else f"sampler {type(sampler).__name__}"
    raise DistributedError(
        f"DataParallel cannot shard a {type(loader).__name__} with the {what}: it shards DataLoaders built "
        f"with shuffle=True or shuffle=False (or a DistributedSampler), giving each rank its part of "
        f"one order. Shard this data yourself, one part per rank (cadence.distributed.rank(), "
        f"world_size()), and pass DataParallel(shard=False)."
    )


def batch_size_of(data: object) -> int | None:
    """The per-rank batch size of a sharded DataLoader, else None."""
    if isinstance(data, DataLoader) and isinstance(data.sampler, ShardSampler):
        return data.batch_size
    return None


def padded_batch(data: object) -> tuple[int, int] | None:
    """Where this rank's padding is, for a shard that has some (a training ``ShardSampler``, or
    a ``DistributedSampler`` of the user's): ``(position, kept)``,
    the 1-based position of the batch that holds it (the epoch's last) and how many of its
    leading samples are real; None when this rank's batches hold no padding.

    ``data`` is what an epoch iterates (``EpochBegin.data``): a sharded DataLoader, or a
    wrapper whose attributes read through to one.

    Example:
        >>> loader = shard(DataLoader(list(range(9)), batch_size=2), 1, 2, training=True, seed=0)
        >>> [batch.tolist() for batch in loader], padded_batch(loader)
        ([[1, 3], [5, 7], [0]], (3, 0))
    """
    sampler = getattr(data, "sampler", None)
    if not isinstance(sampler, DistributedSampler) or sampler.drop_last:
        return None
    if isinstance(sampler, ShardSampler) and not sampler.pad:
        return None
    real = len(range(sampler.rank, len(sampler.dataset), sampler.num_replicas))  # type: ignore[arg-type]
    padding = sampler.num_samples - real
    size = getattr(data, "batch_size", None)
    if not padding:
        return None
    if size is None:  # each index is a batch: the last one is the padding
        return sampler.num_samples, 0
    if getattr(data, "drop_last", False):
        if sampler.num_samples % size:
            return None  # the padded sample is in the dropped batch
        return sampler.num_samples // size, size - padding
    last = -(-sampler.num_samples // size)
    return last, sampler.num_samples - (last - 1) * size - padding


def leading(value: Any, keep: int, size: int) -> Any:
    """``value`` (a batch's ``y``, ``y_pred``, ...) cut to its first ``keep`` samples of
    ``size``: tensors whose first dimension is ``size``, inside tuples, lists and dicts, and
    lists of per-sample records.

    Example:
        >>> leading((torch.arange(4), {"boxes": torch.ones(4, 2)}), 3, 4)
        (tensor([0, 1, 2]), {'boxes': tensor([[1., 1.],
                [1., 1.],
                [1., 1.]])})
    """
    if isinstance(value, torch.Tensor):
        return value[:keep] if value.ndim and value.shape[0] == size else value
    if isinstance(value, (tuple, list)):
        if len(value) == size and value and isinstance(value[0], Mapping):
            return value[:keep]  # per-sample records
        items = [leading(v, keep, size) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    if isinstance(value, Mapping):
        return {k: leading(v, keep, size) for k, v in value.items()}
    return value
