"""Every rank builds the same plans, and runs its own copy of them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cadence import Metrics, MetricsPrinter, ProgressPrinter, Recorder
from cadence.distributed.agreement import Agreement
from cadence.distributed.group import Context
from cadence.distributed.plans import _difference, _skipped, localize
from cadence.events import BatchEnd, FitEnd
from cadence.phases import Phase, TrainingPhase
from cadence.testing import make_test_learner

import torch

Ranks = tuple[Path, list[dict[str, Any]]]


def test_a_callback_on_one_rank_only_is_an_error_on_every_rank(two_ranks: Ranks) -> None:
    _, ranks = two_ranks
    expected = (
        "The ranks built different callback plans, so their collectives would not match and training "
        "would hang; it stops here, on every rank. Rank 1 differs from rank 0:\n"
        "  rank 0: EpochCounter\n"
        "  rank 1: no callbacks\n"
        "  EpochCounter only on rank 0\n"
        "Build the same callbacks, in the same order, on every rank. A callback meant for one rank is "
        'declared in its class: placement = "rank_zero" runs it on rank 0 and skips it elsewhere.'
    )
    assert [result["mismatch"] for result in ranks] == [expected, expected]


def test_plans_that_differ_in_order_are_named_by_their_first_difference() -> None:
    first = {"callbacks": ["A", "B"], "named": ["A (m.A, every_rank)", "B (m.B, every_rank)"], "plans": "BatchEnd in TrainingPhase:\n  1. A.end\n  2. B.end"}
    second = {**first, "plans": "BatchEnd in TrainingPhase:\n  1. B.end\n  2. A.end"}
    message = _difference([first, second])
    assert "  rank 0 and rank 1 have the same callbacks but differ at (in BatchEnd in TrainingPhase):\n  rank 0: 1. A.end\n  rank 1: 1. B.end\n" in message


def test_every_rank_that_differs_is_named_with_how_it_differs() -> None:
    first = {"callbacks": ["A", "B"], "named": ["A (m.A, every_rank)", "B (m.B, every_rank)"], "plans": "FitEnd in Phase:\n  1. A.end\n  2. B.end"}
    swapped = {"callbacks": ["B", "A"], "named": first["named"][::-1], "plans": first["plans"]}
    retyped = {**first, "named": ["A (m.A, every_rank)", "B (other.B, every_rank)"]}
    assert _difference([first, first, swapped, retyped]) == (
        "The ranks built different callback plans, so their collectives would not match and training would "
        "hang; it stops here, on every rank. Ranks 2, 3 differ from rank 0:\n"
        "  rank 0: A, B\n"
        "  rank 2: B, A\n"
        "  the same callbacks in another order on rank 2\n"
        "  rank 0 and rank 3 have the same callbacks but differ at:\n"
        "  rank 0: B (m.B, every_rank)\n"
        "  rank 3: B (other.B, every_rank)\n"
        "Build the same callbacks, in the same order, on every rank. A callback meant for one rank is "
        'declared in its class: placement = "rank_zero" runs it on rank 0 and skips it elsewhere.'
    )


def test_each_rank_runs_the_same_plan_with_rank_zero_handlers_skipped_elsewhere() -> None:
    learner = make_test_learner(Recorder(), Metrics(), ProgressPrinter(), MetricsPrinter())
    plan = learner._plans[TrainingPhase][BatchEnd]
    assert plan is not None
    on_rank_1 = localize(plan, 1, None)
    assert on_rank_1.labels == plan.labels  # explain() and the plan check see the same plan
    skipped = [call is _skipped for call, _ in on_rank_1.calls]
    assert skipped == [label.startswith("ProgressPrinter") for label in plan.labels]
    assert localize(plan, 0, None) is plan  # one process: unchanged


def test_rank_local_deciders_are_wrapped_on_every_rank() -> None:
    learner = make_test_learner(Recorder(), ProgressPrinter())
    plan = learner._plans[Phase][FitEnd]
    assert plan is not None
    waiting = Agreement(Context(0, 2, torch.device("cpu")), check_every=1)
    on_rank_0 = localize(plan, 0, waiting)
    assert [call is not original for (call, _), (original, _) in zip(on_rank_0.calls, plan.calls)] == [True]


def test_a_model_already_wrapped_in_ddp_is_refused_with_the_fix(two_ranks: Ranks) -> None:
    _, ranks = two_ranks
    for result in ranks:
        assert result["wrapped"] == (
            "Learner(model=...) is already a DistributedDataParallel; DataParallel wraps the model itself "
            "(and learner.model stays your module). Pass the module: Learner(ddp.module, ...), or keep your "
            "own DDP with Learner(..., strategy=None) and shard the data yourself."
        )
