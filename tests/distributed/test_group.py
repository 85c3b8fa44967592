"""The process group, who this process is, and cadence's own collectives."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import torch
import torch.distributed as dist

from cadence.distributed.group import (
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
