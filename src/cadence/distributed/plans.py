"""The same plans on every rank: the check when a fit starts, and each rank's copy of a plan.

Every rank must build the same callbacks in the same order: a collective that one rank runs
and another does not waits forever. ``check_same_plans`` compares a digest of every rank's
callbacks and plans in one all-gather and turns a difference into a ``DistributedError`` that
names it, on every rank. ``localize`` then adapts a plan to its rank: a rank-zero callback's
handlers do nothing on the other ranks (so that labels, numbering and ``explain()`` stay the
same everywhere), and the signals of callbacks that decide from rank-local state become
requests (``cadence.distributed.agreement``).
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

from cadence.callback import callback_labels
from cadence.distributed.agreement import Agreement, decides_locally, runs_alone
from cadence.distributed.group import all_gather_ints, gather_json
from cadence.errors import DistributedError
from cadence.events import Event
from cadence.graph import Plan
from cadence.graph.placement import placement_of
from cadence.phases import Phase

__all__ = ["check_same_plans", "localize"]


def _describe(learner: Any) -> dict[str, Any]:
    callbacks = list(learner.callbacks)
    labels = callback_labels(callbacks)
    named = [f"{label} ({type(cb).__module__}.{type(cb).__qualname__}, {placement_of(cb)})" for label, cb in zip(labels, callbacks)]
    # The plans of the phases a rank runs alone (an evaluation on rank 0) differ harmlessly.
    plans = [plan.describe() for plan in learner.plans() if not runs_alone(plan.phase)]
    return {"callbacks": labels, "named": named, "plans": "\n\n".join(plans)}


def check_same_plans(learner: Any) -> None:
    """Check that every rank built the same callbacks and plans: one all-gather of a digest.

    Raises:
        DistributedError: on every rank, naming what differs and the fix.
    """
    mine = _describe(learner)
    text = "\n".join(mine["named"]) + "\n\n" + mine["plans"]
    digest = hashlib.sha256(text.encode()).digest()
    words = [int.from_bytes(digest[i : i + 8], "big", signed=True) for i in range(0, 32, 8)]
    if all(row == words for row in all_gather_ints(words)):
        return
    everyone = gather_json(mine)
    raise DistributedError(_difference(everyone))


def _difference(everyone: list[dict[str, Any]]) -> str:
    """The error when the ranks' plans differ: every rank that differs from rank 0, and how."""
    first = everyone[0]
    found = [(rank, _how(first, other, rank)) for rank, other in enumerate(everyone[1:], start=1) if other != first]
    ranks = ", ".join(str(rank) for rank, _ in found)
    head = (
        "The ranks built different callback plans, so their collectives would not match and training "
        f"would hang; it stops here, on every rank. {'Rank' if len(found) == 1 else 'Ranks'} {ranks or '?'} "
        f"{'differs' if len(found) == 1 else 'differ'} from rank 0:\n"
    )
    fix = (
        "Build the same callbacks, in the same order, on every rank. A callback meant for one rank "
        "is declared in its class: placement = \"rank_zero\" runs it on rank 0 and skips it elsewhere."
    )
    return head + "".join(how + "\n" for _, how in found) + fix


def _how(first: dict[str, Any], other: dict[str, Any], rank: int) -> str:
    """How rank ``rank``'s description differs from rank 0's: the callback lists, or the first
    line of their types and plans that differs."""
    if other["callbacks"] != first["callbacks"]:
        only_first = [c for c in first["callbacks"] if c not in other["callbacks"]]
        only_other = [c for c in other["callbacks"] if c not in first["callbacks"]]
        lines = [f"  rank 0: {', '.join(first['callbacks']) or 'no callbacks'}",
                 f"  rank {rank}: {', '.join(other['callbacks']) or 'no callbacks'}"]
        if only_first or only_other:
            lines.append(
                "  " + "; ".join(
                    [f"{', '.join(only_first)} only on rank 0"] * bool(only_first)
                    + [f"{', '.join(only_other)} only on rank {rank}"] * bool(only_other)
                )
            )
        else:
            lines.append(f"  the same callbacks in another order on rank {rank}")
        return "\n".join(lines)
    ours, theirs = first["named"] + first["plans"].splitlines(), other["named"] + other["plans"].splitlines()
    at = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
    shown = [lines[at].strip() if at < len(lines) else "(nothing)" for lines in (ours, theirs)]
    where = next((line for line in reversed(ours[:at]) if line.endswith(":")), None)  # the plan's heading
    within = f" (in {where[:-1]})" if where is not None and at >= len(first["named"]) else ""
    return f"  rank 0 and rank {rank} have the same callbacks but differ at{within}:\n  rank 0: {shown[0]}\n  rank {rank}: {shown[1]}"


def _skipped(event: Event, phase: Phase, learner: Any) -> None:
    """Stands for a rank-zero callback's handler on the other ranks."""


def localize(plan: Plan, rank: int, agreement: Agreement | None) -> Plan:
    """``plan`` as rank ``rank`` runs it: rank-zero handlers skipped elsewhere, and with
    ``agreement`` (several ranks) rank-local deciders' signals turned into requests."""
    calls = []
    changed = False
    for (call, view), callback, label, access in zip(plan.calls, plan.callbacks, plan.labels, plan.accesses):
        if rank != 0 and placement_of(callback) == "rank_zero":
            call, changed = _skipped, True
        elif agreement is not None and decides_locally(callback, access):
            call, changed = agreement.wrap(call, label), True
        calls.append((call, view))
    return dataclasses.replace(plan, calls=tuple(calls), cache={}) if changed else plan
