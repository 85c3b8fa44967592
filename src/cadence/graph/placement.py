"""Placement checks at build time: each callback's ``placement`` is a known value, and a callback
that runs on rank zero only writes nothing that callbacks on every rank read.

In a distributed fit a ``"rank_zero"`` callback's ``init`` and handlers run on the process of
rank 0 alone (``cadence.distributed``); in one process it runs as any other. What it writes
exists on rank 0 only, so an every-rank reader of it would see different state on each rank:
that is refused here, on one process too, so that a script that works on one process works on
many.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cadence.access import AccessSet, dotted, overlaps
from cadence.callback import PLACEMENTS, Callback
from cadence.errors import DeclarationError

__all__ = ["check_placements", "placement_of", "runs_here"]


def placement_of(callback: Callback) -> str:
    """The callback's declared ``placement`` (read on the instance, so wrappers can forward it)."""
    return str(getattr(callback, "placement", "every_rank"))


def runs_here(learner: Any, callback: Callback) -> bool:
    """Whether ``callback`` takes part in this process: always, but for a rank-zero callback on
    another rank of a distributed fit, whose ``init``, handlers, ``reset``, ``state_dict`` and
    ``load_state_dict`` run on rank 0 alone (its state is rank 0's, in checkpoints too)."""
    strategy = getattr(learner, "strategy", None)
    return strategy is None or bool(strategy.runs_init(callback))


def check_placements(labels: Sequence[str], callbacks: Sequence[Callback], accesses: Sequence[AccessSet]) -> None:
    """Check every callback's ``placement`` and what rank-zero callbacks write.

    Raises:
        DeclarationError: an unknown placement, or a rank-zero callback writing state that a
            callback running on every rank reads (or learner state outside ``cbstate``).
    """
    for label, callback in zip(labels, callbacks):
        value = getattr(callback, "placement", "every_rank")
        if value not in PLACEMENTS:
            raise DeclarationError(
                f"{label}.placement is {value!r}; use \"every_rank\" (the default: it runs on every "
                f"process of a distributed fit) or \"rank_zero\" (it runs on the process of rank 0 "
                f"only, for printing, logging and writing files), e.g. placement = \"rank_zero\" in "
                f"the class body."
            )
    everywhere = [i for i, cb in enumerate(callbacks) if placement_of(cb) == "every_rank"]
    for i, callback in enumerate(callbacks):
        if placement_of(callback) != "rank_zero":
            continue
        for path in accesses[i].writes:
            if path[0] != "cbstate" or len(path) == 1:
                raise DeclarationError(
                    f"{labels[i]} runs on rank zero only (placement = \"rank_zero\") but writes "
                    f"{dotted(path)}, which every rank uses: the ranks would train on different "
                    f"state. Make it placement = \"every_rank\", or move that write into a callback "
                    f"that runs on every rank."
                )
            for j in everywhere:
                read = next((p for p in accesses[j].all() if overlaps(p, path)), None)
                if read is not None:
                    raise DeclarationError(
                        f"{labels[i]} runs on rank zero only (placement = \"rank_zero\") but writes "
                        f"{dotted(path)}, which {labels[j]} reads on every rank: the other ranks "
                        f"would never see it. Make {labels[i]} placement = \"every_rank\", or "
                        f"{labels[j]} placement = \"rank_zero\" if it only reports."
                    )
