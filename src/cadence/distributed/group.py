"""The process group: joining it from torchrun's environment, who this process is, and the few
collectives cadence runs itself. Each of them runs on every rank at the same point of a fit (its
start, an epoch's end, a checkpoint), never per batch and never under a rank condition.

torchrun (and ``cadence.distributed.launch``) describe the process in environment variables:
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``.
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from cadence.errors import DistributedError

__all__ = [
    "INLINE_BYTES",
    "Context",
    "activate",
    "all_gather_ints",
    "all_reduce_sum",
    "current",
    "deactivate",
    "default_backend",
    "gather_json",
    "join",
    "local_rank",
    "rank",
    "world_size",
]


def rank() -> int:
    """This process's rank: from the process group once joined, else from ``RANK`` (0 alone).

    Example:
        >>> rank(), world_size()  # a plain process
        (0, 1)
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return _env_int("RANK", 0)


def world_size() -> int:
    """How many processes train together: the process group's size, else ``WORLD_SIZE`` (1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return _env_int("WORLD_SIZE", 1)


def local_rank() -> int:
    """This process's rank on its machine (``LOCAL_RANK``), which picks its GPU."""
    return _env_int("LOCAL_RANK", rank())


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise DistributedError(
            f"The environment variable {name}={value!r} is not a number; torchrun sets it. Start "
            f"the script with torchrun (or cadence.distributed.launch), or unset {name}."
        ) from None


def default_backend() -> str:
    """``"nccl"`` where CUDA and NCCL are available, else ``"gloo"`` (CPUs)."""
    if torch.cuda.is_available() and dist.is_nccl_available():
        return "nccl"
    return "gloo"


def join(backend: str, timeout: float) -> bool:
    """Join the default process group from the environment (``env://``) unless this process
    is in one already; returns whether this call created it.

    Raises:
        DistributedError: ``WORLD_SIZE`` says there are several processes but torchrun's
            rendezvous variables are missing.
    """
    if dist.is_initialized():
        return False
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT", "RANK") if name not in os.environ]
    if missing:
        raise DistributedError(
            f"WORLD_SIZE={os.environ.get('WORLD_SIZE')} says this process is one of several, but "
            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set. Start the script "
            f"with torchrun, e.g. torchrun --nproc-per-node=2 train.py, or from Python with "
            f"cadence.distributed.launch(main, nprocs=2)."
        )
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
    return True


@dataclass(frozen=True, slots=True)
class Context:
    """The distributed fit running in this process.

    Attributes:
        rank: This process's rank.
        world_size: The number of processes (1 for a ``DataParallel`` fit on one process).
        device: Where this process trains, and where collective tensors go (a CUDA device
            under nccl).
        batch_size: The training DataLoader's batch size on each rank (None where the data is
            sharded by whole batches).
        sharding: ``"samples"`` (a ``ShardSampler`` per rank), ``"sampler"`` (the DataLoader's
            own ``DistributedSampler``), ``"batches"`` (every world-size-th batch) or
            ``"none"`` (the data is used as given).
    """

    rank: int
    world_size: int
    device: torch.device
    batch_size: int | None = None
    sharding: str = "none"


_active: list[Context] = []


def current() -> Context | None:
    """The ``Context`` of the ``DataParallel`` fit running in this process, or None.

    Callbacks that reduce across ranks (``Metrics``) or write once (``Checkpointer``) ask this.
    """
    return _active[-1] if _active else None


def activate(context: Context) -> None:
    """Make ``context`` the current one (a ``DataParallel`` fit starts)."""
    _active.append(context)


def deactivate(context: Context) -> None:
    """End ``context`` (its fit ended)."""
    if context in _active:
        _active.remove(context)


def _device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(values: Sequence[float | torch.Tensor]) -> list[float]:
    """The sums over all ranks of ``values`` (numbers or scalar tensors), as floats: one
    all-reduce of one float64 tensor. Every rank gets bit-identical results."""
    device = _device()
    packed = torch.stack([torch.as_tensor(v, dtype=torch.float64).to(device).reshape(()) for v in values])
    dist.all_reduce(packed)
    return [float(v) for v in packed.tolist()]


def all_gather_ints(values: Sequence[int]) -> list[list[int]]:
    """Every rank's ``values`` (the same count on each), by rank: one all-gather."""
    device = _device()
    local = torch.tensor(list(values), dtype=torch.int64, device=device)
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    return [[int(v) for v in g.tolist()] for g in gathered]


#: JSON of up to this many bytes rides in ``gather_json``'s first (and then only) all-gather.
INLINE_BYTES = 1016


def gather_json(value: Any) -> list[Any]:
    """Every rank's ``value`` (JSON data), by rank: one all-gather of a fixed-size buffer (the
    length and the first ``INLINE_BYTES`` of the UTF-8 text), and a second one only when some
    rank's text is longer. JSON, not pickle: reading what another process sent never runs code."""
    device = _device()
    data = json.dumps(value).encode()
    head = bytearray(len(data).to_bytes(8, "little") + data[:INLINE_BYTES])
    head += bytes(8 + INLINE_BYTES - len(head))
    local = torch.frombuffer(head, dtype=torch.uint8).to(device)
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    rows = [bytes(g.tolist()) for g in gathered]
    sizes = [int.from_bytes(row[:8], "little") for row in rows]
    if max(sizes) <= INLINE_BYTES:
        return [json.loads(row[8 : 8 + n].decode()) for row, n in zip(rows, sizes)]
    padded = bytearray(data) + bytes(max(sizes) - len(data))
    whole = torch.frombuffer(padded, dtype=torch.uint8).to(device)
    texts = [torch.empty_like(whole) for _ in sizes]
    dist.all_gather(texts, whole)
    return [json.loads(bytes(t[:n].tolist()).decode()) for t, n in zip(texts, sizes)]
