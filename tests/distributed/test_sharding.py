"""Each rank's share of the data."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset, WeightedRandomSampler

from cadence.distributed.sharding import ShardedBatches, ShardSampler, batch_size_of, leading, padded_batch, shard
from cadence.errors import DistributedError


def indices(loader: object) -> list[list[int]]:
    return [batch.tolist() for batch in loader]  # type: ignore[attr-defined]


@pytest.mark.parametrize("world", [1, 2, 3])
def test_the_shards_of_one_step_are_the_batch_of_one_process(world: int) -> None:
    # Every world size draws the same permutation; step j's shards together hold its positions
    # j*G .. (j+1)*G - 1 for the global batch G = world * per-rank batch.
    data = list(range(24))
    alone = indices(shard(DataLoader(data, batch_size=12, shuffle=True), 0, 1, training=True, seed=5))
    ranks = [indices(shard(DataLoader(data, batch_size=12 // world, shuffle=True), r, world, training=True, seed=5)) for r in range(world)]
    for step, batch in enumerate(alone):
        assert sorted(sum((shards[step] for shards in ranks), [])) == sorted(batch)


def test_training_shards_are_padded_and_validation_shards_are_not() -> None:
    data = list(range(9))
    training = [indices(shard(DataLoader(data, batch_size=2), r, 2, training=True, seed=0)) for r in (0, 1)]
    assert training == [[[0, 2], [4, 6], [8]], [[1, 3], [5, 7], [0]]]  # rank 1 repeats sample 0
    validation = [indices(shard(DataLoader(data, batch_size=2), r, 2, training=False, seed=0)) for r in (0, 1)]
    assert validation == [[[0, 2], [4, 6], [8]], [[1, 3], [5, 7]]]


def test_the_padding_is_found_in_the_last_batch() -> None:
    loader = shard(DataLoader(list(range(9)), batch_size=2), 1, 2, training=True, seed=0)
    assert padded_batch(loader) == (3, 0)  # the third batch, all padding
    loader = shard(DataLoader(list(range(11)), batch_size=4), 1, 2, training=True, seed=0)
    assert indices(loader) == [[1, 3, 5, 7], [9, 0]] and padded_batch(loader) == (2, 1)
    assert padded_batch(shard(DataLoader(list(range(11)), batch_size=4), 0, 2, training=True, seed=0)) is None
    assert padded_batch(shard(DataLoader(list(range(9)), batch_size=2), 1, 2, training=False, seed=0)) is None
    assert padded_batch([1, 2, 3]) is None


def test_a_dropped_last_batch_takes_the_padding_with_it() -> None:
    loader = shard(DataLoader(list(range(9)), batch_size=2, drop_last=True), 1, 2, training=True, seed=0)
    assert indices(loader) == [[1, 3], [5, 7]] and padded_batch(loader) is None
    loader = shard(DataLoader(list(range(7)), batch_size=2, drop_last=True), 1, 2, training=True, seed=0)
    assert indices(loader) == [[1, 3], [5, 0]] and padded_batch(loader) == (2, 1)


def test_a_rebuilt_loader_keeps_its_options_and_batch_size() -> None:
    original = DataLoader(TensorDataset(torch.arange(8.0)), batch_size=3, shuffle=True, collate_fn=lambda b: b, pin_memory=False)
    sharded = shard(original, 0, 2, training=True, seed=0)
    assert isinstance(sharded, DataLoader) and isinstance(sharded.sampler, ShardSampler)
    assert sharded.collate_fn is original.collate_fn and batch_size_of(sharded) == 3
    assert sharded.sampler.shuffle


def test_a_distributed_sampler_is_replaced_with_its_settings() -> None:
    data = list(range(8))
    given = DataLoader(data, batch_size=2, sampler=DistributedSampler(data, num_replicas=2, rank=0, shuffle=False))
    sharded = shard(given, 1, 2, training=True, seed=0)
    assert indices(sharded) == [[1, 3], [5, 7]]


def test_a_custom_sampler_is_refused_with_the_fix() -> None:
    weighted = DataLoader(list(range(4)), sampler=WeightedRandomSampler([1.0] * 4, 4))
    with pytest.raises(
        DistributedError,
        match=r"DataParallel cannot shard a DataLoader with the sampler WeightedRandomSampler: it shards "
        r"DataLoaders built with shuffle=True or shuffle=False \(or a DistributedSampler\).* Shard this data "
        r"yourself, one part per rank \(cadence.distributed.rank\(\), world_size\(\)\), and pass DataParallel\(shard=False\).",
    ):
        shard(weighted, 0, 2, training=True, seed=0)
    batches = DataLoader(list(range(4)), batch_sampler=[[0, 1], [2, 3]])
    with pytest.raises(DistributedError, match=r"with the batch sampler list"):
        shard(batches, 0, 2, training=True, seed=0)


def test_other_iterables_are_sharded_by_whole_batches() -> None:
    batches = [f"b{i}" for i in range(7)]
    training = [list(shard(batches, r, 3, training=True, seed=0)) for r in range(3)]
    assert training == [["b0", "b3"], ["b1", "b4"], ["b2", "b5"]]  # b6, an incomplete round, is dropped
    validation = [list(shard(batches, r, 3, training=False, seed=0)) for r in range(3)]
    assert validation == [["b0", "b3", "b6"], ["b1", "b4"], ["b2", "b5"]]
    assert [len(shard(batches, r, 3, training=t, seed=0)) for t in (True, False) for r in range(3)] == [2, 2, 2, 3, 2, 2]  # type: ignore[arg-type]


def test_a_generator_is_sharded_without_a_length() -> None:
    sharded = ShardedBatches((i for i in range(5)), 1, 2, complete_rounds=True)
    assert list(sharded) == [1, 3]
    with pytest.raises(TypeError, match="generator has no len"):
        len(sharded)


def test_leading_cuts_every_per_sample_part() -> None:
    records = [{"box": i} for i in range(4)]
    assert leading(records, 2, 4) == [{"box": 0}, {"box": 1}]
    assert leading({"y": torch.arange(4), "scale": torch.tensor(2.0)}, 1, 4)["scale"] == torch.tensor(2.0)
    assert leading("label", 1, 4) == "label"


class Loader(DataLoader):  # type: ignore[type-arg]
    """A DataLoader subclass: its constructor is its own, so it cannot be rebuilt."""


def test_a_dataloader_subclass_with_a_distributed_sampler_for_this_rank_is_its_shard() -> None:
    data = list(range(9))
    loaders = [Loader(data, batch_size=2, sampler=DistributedSampler(data, num_replicas=2, rank=r, shuffle=False)) for r in (0, 1)]
    shards = [shard(loader, r, 2, training=True, seed=0) for r, loader in enumerate(loaders)]
    assert shards == loaders  # used as they are
    assert [indices(s) for s in shards] == [[[0, 2], [4, 6], [8]], [[1, 3], [5, 7], [0]]]
    assert [padded_batch(s) for s in shards] == [None, (3, 0)]  # Metrics leaves out rank 1's repeat
    unpadded = Loader(data, batch_size=4, sampler=DistributedSampler(data, num_replicas=2, rank=1, drop_last=True))
    assert padded_batch(unpadded) is None


def test_a_dataloader_subclass_with_a_distributed_sampler_for_another_rank_is_refused_with_the_fix() -> None:
    data = list(range(8))
    loader = Loader(data, batch_size=2, sampler=DistributedSampler(data, num_replicas=4, rank=0))
    with pytest.raises(
        DistributedError,
        match=r"The training or validation Loader has a DistributedSampler\(num_replicas=4, rank=0\), but this "
        r"process is rank 1 of 2. Build it with DistributedSampler\(dataset, num_replicas=cadence.distributed."
        r"world_size\(\), rank=cadence.distributed.rank\(\)\), or leave the sampler out and pass a plain DataLoader.",
    ):
        shard(loader, 1, 2, training=True, seed=0)


def test_an_unshuffled_dataloader_subclass_is_sharded_by_whole_batches() -> None:
    loader = Loader(list(range(10)), batch_size=2)
    shards = [shard(loader, r, 2, training=True, seed=0) for r in (0, 1)]
    assert all(isinstance(s, ShardedBatches) for s in shards)
    assert [indices(s) for s in shards] == [[[0, 1], [4, 5]], [[2, 3], [6, 7]]]  # [8, 9]: an incomplete round
    everything = sorted(i for s in shards for batch in indices(s) for i in batch)
    assert len(everything) == len(set(everything))  # no sample on two ranks


def test_a_shuffling_dataloader_subclass_is_refused_with_the_fix() -> None:
    with pytest.raises(
        DistributedError,
        match=r"DataParallel cannot shard the shuffling Loader: a DataLoader subclass is not rebuilt with a "
        r"sampler per rank, and sharding it by whole batches needs one order on every rank, while each rank "
        r"would shuffle with its own random state \(some samples twice, others never\). Give it "
        r"sampler=DistributedSampler\(dataset, shuffle=True\) \(DataParallel picks each rank's part and sets "
        r"the epoch\), pass a plain DataLoader\(dataset, batch_size=..., shuffle=True\), or shard the data "
        r"yourself and pass DataParallel\(shard=False\).",
    ):
        shard(Loader(list(range(8)), batch_size=2, shuffle=True), 0, 2, training=True, seed=0)


def test_a_dataloader_subclass_with_a_custom_sampler_is_refused_with_the_fix() -> None:
    weighted = Loader(list(range(4)), sampler=WeightedRandomSampler([1.0] * 4, 4))
    with pytest.raises(DistributedError, match=r"DataParallel cannot shard a Loader with the sampler WeightedRandomSampler: .* and pass DataParallel\(shard=False\)."):
        shard(weighted, 0, 2, training=False, seed=0)
