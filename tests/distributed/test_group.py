"""The process group, who this process is, and cadence's own collectives."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.distributed as dist

from cadence.distributed.group import (
    INLINE_BYTES,
    Context,
    activate,
    all_gather_ints,
    all_reduce_sum,
    current,
    deactivate,
    default_backend,
    gather_json,
    join,
    local_rank,
    rank,
    world_size,
)
from cadence.errors import DistributedError


def test_who_this_process_is_comes_from_torchruns_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert (rank(), world_size(), local_rank()) == (3, 4, 1)
    monkeypatch.setenv("RANK", "three")
    with pytest.raises(DistributedError, match=r"The environment variable RANK='three' is not a number; torchrun sets it."):
        rank()


def test_several_processes_without_a_rendezvous_are_refused_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("MASTER_ADDR", "MASTER_PORT", "RANK"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(
        DistributedError,
        match=r"WORLD_SIZE=2 says this process is one of several, but MASTER_ADDR, MASTER_PORT, RANK are not set. "
        r"Start the script with torchrun, e.g. torchrun --nproc-per-node=2 train.py, or from Python with "
        r"cadence.distributed.launch\(main, nprocs=2\).",
    ):
        join("gloo", 10)


def test_the_backend_follows_the_hardware() -> None:
    assert default_backend() == ("nccl" if torch.cuda.is_available() else "gloo")


def test_the_current_context_is_the_fit_that_runs() -> None:
    context = Context(0, 1, torch.device("cpu"))
    assert current() is None
    activate(context)
    assert current() is context
    deactivate(context)
    assert current() is None


@pytest.fixture
def group_of_one() -> Iterator[None]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_the_collectives_cadence_runs(group_of_one: None) -> None:
    assert all_reduce_sum([1.5, torch.tensor(2.0, dtype=torch.float64), 3]) == [1.5, 2.0, 3.0]
    assert all_gather_ints([7, -8]) == [[7, -8]]
    assert gather_json({"reason": "stop\tnow ✓", "n": [1]}) == [{"reason": "stop\tnow ✓", "n": [1]}]
    assert join("gloo", 10) is False  # already in a group: joined, not created


def test_json_of_any_size_is_gathered_in_one_all_gather_when_it_is_small(two_ranks: tuple[Any, list[dict[str, Any]]]) -> None:
    _, ranks = two_ranks
    large = {"rank": 1, "text": "x" * (2 * INLINE_BYTES)}
    for result in ranks:
        assert result["group_errors"]["gathered"] == [[{"rank": 0}, {"rank": 1}], [{"rank": 0}, large]]


def test_a_small_gather_is_one_collective(group_of_one: None, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    original = dist.all_gather

    def counted(tensors: Any, tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        calls.append(tensor.numel())
        return original(tensors, tensor, *args, **kwargs)

    monkeypatch.setattr(dist, "all_gather", counted)
    assert gather_json(["a" * (INLINE_BYTES - 4)]) == [["a" * (INLINE_BYTES - 4)]]
    assert calls == [8 + INLINE_BYTES]
    long = "b" * (INLINE_BYTES + 100)
    assert gather_json(long) == [long]
    assert calls == [8 + INLINE_BYTES, 8 + INLINE_BYTES, INLINE_BYTES + 102]  # the length, then the whole text
