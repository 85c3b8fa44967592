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
