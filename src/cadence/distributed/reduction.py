"""Metric values over every rank's data, for ``Metrics``: running sums added across ranks with one
all-reduce, and torchmetrics metrics synchronised through their own ``sync()``. Both run when
an epoch ends (and when a checkpoint captures an epoch under way), on every rank, never per
batch."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from cadence.distributed.group import all_reduce_sum, current
from cadence.errors import DistributedError

__all__ = ["across_ranks", "check_syncable", "sum_across_ranks", "synced"]


def across_ranks() -> bool:
    """Whether a distributed fit with more than one rank runs in this process."""
    context = current()
    return context is not None and context.world_size > 1


def sum_across_ranks(count: int, sums: Sequence[float | torch.Tensor]) -> tuple[int, list[float]]:
    """``count`` and ``sums`` added over all ranks: one all-reduce."""
    total, *added = all_reduce_sum([float(count), *sums])
    return round(total), added


def check_syncable(key: str, metric: Any) -> None:
    """Refuse a stateful metric that cannot be synchronised across ranks.

    Raises:
        DistributedError: ``metric`` has no torchmetrics-style ``sync()``/``unsync()``.
    """
    if not (callable(getattr(metric, "sync", None)) and callable(getattr(metric, "unsync", None))):
        raise DistributedError(
            f"Metrics cannot compute {key} over every rank's data: {type(metric).__name__} has no "
            f"sync()/unsync() to gather its state across ranks. Use a torchmetrics Metric (they sync "
            f"themselves), or a function (y_pred, y) -> tensor, which Metrics averages across ranks."
        )


@contextlib.contextmanager
def synced(metrics: Sequence[Any], *, unless_self_syncing: bool) -> Iterator[None]:
    """Within the block, ``metrics`` hold the state of every rank (torchmetrics' ``sync()``),
    and their own again after. With ``unless_self_syncing``, metrics whose ``compute()`` syncs
    by itself (``sync_on_compute=True``, torchmetrics' default) are left alone."""
    done = []
    try:
        for metric in metrics:
            if unless_self_syncing and getattr(metric, "_to_sync", False):
                continue
            metric.sync(should_sync=True)
            done.append(metric)
        yield
    finally:
        for metric in done:
            metric.unsync()
