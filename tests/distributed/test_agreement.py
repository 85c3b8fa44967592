"""Stops agreed by every rank at the same batch, and no collective per batch beyond DDP's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from cadence import (
    READ,
    Callback,
    CancelBatch,
    CancelEpoch,
    CancelFit,
    Checkpointer,
    EarlyStopping,
    Metrics,
    MetricsPrinter,
    ProgressPrinter,
    Recorder,
    StopOnNaNLoss,
    on,
)
from cadence.access import parse_state_access
from cadence.distributed.agreement import EPOCH, FIT, Agreement, decides_locally
from cadence.distributed.group import Context
from cadence.errors import DistributedError
from cadence.events import BatchEnd, Event
from cadence.phases import Phase, TrainingPhase, ValidationPhase
from distributed import scenarios

Ranks = tuple[Path, list[dict[str, Any]]]


def test_a_cancel_fit_raised_on_one_rank_stops_every_rank_after_the_same_step(two_ranks: Ranks) -> None:
    _, ranks = two_ranks
    reference = scenarios.stops(16, on_rank=0)["fit"]  # one process stopping at step 3
    for result in ranks:
        stopped = result["stops"]["fit"]
        assert stopped["steps"] == reference["steps"] == [3, 0]  # 3 steps, no epoch ended
        for got, expected in zip(stopped["weights"], reference["weights"]):
            assert torch.allclose(got, expected, atol=1e-6, rtol=0)
        assert any(
            "StopAt.check: stop asked on rank 1 at step 3 (on rank 1; every rank stopped at this batch)." in m
            for m in stopped["log"]
        ), stopped["log"]


def test_a_cancel_epoch_raised_on_one_rank_ends_the_epoch_on_every_rank(two_ranks: Ranks) -> None:
    _, ranks = two_ranks
    reference = scenarios.stops(16, on_rank=0)["epoch"]
    for result in ranks:
        stopped = result["stops"]["epoch"]
        assert stopped["steps"] == reference["steps"] == [2 + 6, 2]  # the first epoch ends after step 2
        for got, expected in zip(stopped["weights"], reference["weights"]):
            assert torch.allclose(got, expected, atol=1e-6, rtol=0)


def test_a_training_step_runs_no_collective_beyond_the_gradient_all_reduce(two_ranks: Ranks) -> None:
    _, ranks = two_ranks
    for result in ranks:
        # Steps 3 to 6: one all-reduce each (the model's gradients fit in one DDP bucket); the
        # stop requests of StopOnNaNLoss and the printers ride in it.
        assert result["collectives"] == {
            "defaults": {"c10d::allreduce_": 4},
            "replicated only": {"c10d::allreduce_": 4},
        }


class ClockStop(Callback):
    """Reads nothing of the learner: decides from its own state (a clock, a signal)."""

    @on(BatchEnd)
    def check(self, event: Event, phase: Phase, learner: Any) -> None:
        pass


class MaxSteps(Callback):
    state_access = {"cbstate.history": READ}

    @on(BatchEnd)
    def check(self, event: Event, phase: Phase, learner: Any) -> None:
        pass


@pytest.mark.parametrize(
    ("callback", "local"),
    [
        (EarlyStopping(), False),  # cbstate.metrics.epochs: reduced across ranks
        (Metrics(), True),  # reads the batch
        (Recorder(), True),  # reads nothing (counts by itself)
        (StopOnNaNLoss(), True),  # batch.loss
        (ProgressPrinter(), True),  # rank zero only
        (MetricsPrinter(), True),  # rank zero only
        (Checkpointer("unused"), True),  # all of cbstate, and signals
        (ClockStop(), True),
        (MaxSteps(), True),  # validation step counts differ between ranks
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Callback) else str(value),
)
def test_which_callbacks_decide_from_rank_local_state(callback: Callback, local: bool) -> None:
    assert decides_locally(callback, parse_state_access("cb", callback.state_access)) is local


def agreement(rank: int = 1) -> Agreement:
    return Agreement(Context(rank, 2, torch.device("cpu")), check_every=32)


def raising(signal: Exception) -> Any:
    def handler(event: Event, phase: Phase, learner: Any) -> None:
        raise signal

    return handler


def test_a_rank_local_cancel_fit_becomes_a_request_and_the_event_goes_on() -> None:
    waiting = agreement()
    wrapped = waiting.wrap(raising(CancelFit("the clock ran out")), "ClockStop.check")
    assert wrapped(BatchEnd(), TrainingPhase(), None) is None
    assert waiting.requests.tolist() == [1.0, 0.0, 0.0]
    wrapped = waiting.wrap(raising(CancelEpoch("enough")), "ClockStop.check")
    wrapped(BatchEnd(), TrainingPhase(), None)
    assert waiting.requests.tolist() == [1.0, 1.0, 0.0]


def test_a_cancel_epoch_in_validation_takes_effect_at_once() -> None:
    # No collective runs per validation batch, so a rank may end its validation epoch alone.
    wrapped = agreement().wrap(raising(CancelEpoch("enough")), "ClockStop.check")
    with pytest.raises(CancelEpoch):
        wrapped(BatchEnd(), ValidationPhase(), None)


def test_a_rank_local_cancel_batch_in_training_is_an_error_not_a_hang() -> None:
    wrapped = agreement().wrap(raising(CancelBatch("bad batch")), "SkipBad.check")
    with pytest.raises(
        DistributedError,
        match=r"SkipBad.check raised CancelBatch in TrainingPhase on rank 1 only: it decides from state "
        r"that differs between ranks .* leaves the others waiting for its gradients. Decide from "
        r"replicated state \(model, optimizer, cbstate.metrics.epochs\) so that every rank skips it, or "
        r"leave such batches out of the data.",
    ):
        wrapped(BatchEnd(), TrainingPhase(), None)


def test_requests_are_kept_once_with_the_first_reason() -> None:
    waiting = agreement()
    waiting.request(FIT, "A.check", "first")
    waiting.request(FIT, "B.check", "second")
    waiting.request(EPOCH, "C.check", "epoch")
    assert waiting._reasons == {FIT: ("A.check", "first"), EPOCH: ("C.check", "epoch")}


def test_a_pending_request_never_stops_the_next_fit_and_a_cancel_fit_at_fit_end_is_a_scope_error(two_ranks: Ranks) -> None:
    _, (first, second) = two_ranks
    for result in (first, second):
        got = result["leftover_requests"]
        assert got["first"] == "every rank fails before the request is agreed"
        # 2 steps in the failed fit, then 4 per epoch: rank 1's request died with its fit.
        assert (got["second_stopped"], got["second_steps"]) == (None, 2 + 4)
        assert (got["third_stopped"], got["third_steps"]) == (None, 2 + 4 + 8)
    assert "second" not in first["leftover_requests"]
    assert second["leftover_requests"]["second"] == (
        "SignalScopeError: CancelFit raised by StopAtFitEnd.end at FitEnd, where it has nothing to cancel. "
        "CancelBatch works from BatchBegin to BackwardEnd (LossBegin in validation), CancelEpoch from "
        "EpochBegin to EpochEnd, and CancelFit anywhere but FitEnd."
    )


def test_requests_are_cleared_and_a_cancel_fit_at_fit_end_is_raised_as_it_is() -> None:
    from cadence.events import FitEnd

    waiting = agreement()
    waiting.request(FIT, "A.check", "first")
    waiting._seen = torch.ones(3)
    waiting.clear()
    assert waiting.requests.tolist() == [0.0, 0.0, 0.0] and waiting._reasons == {} and waiting._seen is None
    wrapped = waiting.wrap(raising(CancelFit("too late")), "Late.end")
    with pytest.raises(CancelFit, match="too late"):
        wrapped(FitEnd(), Phase(), None)
    assert waiting.requests.tolist() == [0.0, 0.0, 0.0]
