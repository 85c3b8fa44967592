"""Metric values over every rank: what can be synchronised, and when it is."""

from __future__ import annotations

from typing import Any

import pytest

from cadence.distributed.reduction import across_ranks, check_syncable, synced
from cadence.errors import DistributedError


class Mean:
    """A stateful metric without torchmetrics' sync()."""

    def update(self, y_pred: Any, y: Any) -> None: ...

    def compute(self) -> float:
        return 0.0

    def reset(self) -> None: ...


class Syncing(Mean):
    def __init__(self, syncs_itself: bool) -> None:
        self._to_sync = syncs_itself
        self.calls: list[str] = []

    def sync(self, should_sync: bool = True) -> None:
        self.calls.append("sync")

    def unsync(self) -> None:
        self.calls.append("unsync")


def test_a_metric_that_cannot_sync_is_refused_with_the_fix() -> None:
    with pytest.raises(
        DistributedError,
        match=r"Metrics cannot compute valid/mean over every rank's data: Mean has no sync\(\)/unsync\(\) to "
        r"gather its state across ranks. Use a torchmetrics Metric \(they sync themselves\), or a function "
        r"\(y_pred, y\) -> tensor, which Metrics averages across ranks.",
    ):
        check_syncable("valid/mean", Mean())
    check_syncable("valid/mean", Syncing(True))


def test_metrics_are_synchronised_for_the_block_and_restored_after() -> None:
    itself, other = Syncing(True), Syncing(False)
    with synced([itself, other], unless_self_syncing=True):
        assert (itself.calls, other.calls) == ([], ["sync"])  # compute() syncs the first by itself
    assert other.calls == ["sync", "unsync"]
    with pytest.raises(RuntimeError), synced([itself], unless_self_syncing=False):
        raise RuntimeError("unsync runs anyway")
    assert itself.calls == ["sync", "unsync"]


def test_one_process_reduces_nothing() -> None:
    assert across_ranks() is False
