"""Placement: every rank or rank zero only, checked when the learner is built, shown by explain()."""

from __future__ import annotations

from typing import Any

import pytest

from cadence import READ, WRITE, Callback, DeclarationError, Recorder, on, throttle
from cadence.callbacks.metrics_printer import MetricsPrinter
from cadence.events import BatchEnd, EpochEnd, Event
from cadence.phases import Phase, TrainingPhase
from cadence.testing import make_test_learner


class Report(Callback):
    placement = "rank_zero"
    state_access = {"cbstate.history": READ}

    @on(EpochEnd)
    def report(self, event: Event, phase: Phase, learner: Any) -> None:
        pass


def test_explain_marks_the_handlers_that_run_on_rank_zero_only() -> None:
    learner = make_test_learner(Recorder(), Report())
    assert learner.explain(EpochEnd, TrainingPhase) == (
        "EpochEnd in TrainingPhase:\n"
        "  1. Recorder.epoch_end\n"
        "  2. Report.report\n"
        "       on rank zero only\n"
        "       after Recorder: Recorder writes cbstate.history, Report reads cbstate.history"
    )


def test_an_unknown_placement_is_refused_with_the_fix() -> None:
    class Everywhere(Report):
        placement = "all"  # type: ignore[assignment]

    with pytest.raises(
        DeclarationError,
        match=r"Everywhere.placement is 'all'; use \"every_rank\" \(the default: it runs on every process of a "
        r"distributed fit\) or \"rank_zero\" \(it runs on the process of rank 0 only, for printing, logging and "
        r"writing files\), e.g. placement = \"rank_zero\" in the class body.",
    ):
        make_test_learner(Recorder(), Everywhere())


class Shout(Callback):
    placement = "rank_zero"
    state_access = {"cbstate.shouted": WRITE}

    def init(self, learner: Any) -> None:
        learner.cbstate.shouted = 0


class Listen(Callback):
    state_access = {"cbstate.shouted": READ}

    @on(BatchEnd)
    def listen(self, event: Event, phase: Phase, learner: Any) -> None:
        pass


def test_a_rank_zero_callback_may_not_write_what_every_rank_reads() -> None:
    with pytest.raises(
        DeclarationError,
        match=r"Shout runs on rank zero only \(placement = \"rank_zero\"\) but writes cbstate.shouted, which Listen "
        r"reads on every rank: the other ranks would never see it. Make Shout placement = \"every_rank\", or "
        r"Listen placement = \"rank_zero\" if it only reports.",
    ):
        make_test_learner(Shout(), Listen())
    make_test_learner(Shout())  # nothing on every rank reads it


def test_a_rank_zero_callback_may_not_write_training_state() -> None:
    class Tune(Callback):
        placement = "rank_zero"
        state_access = {"optimizer": WRITE}

    with pytest.raises(
        DeclarationError,
        match=r"Tune runs on rank zero only \(placement = \"rank_zero\"\) but writes optimizer, which every rank "
        r"uses: the ranks would train on different state. Make it placement = \"every_rank\", or move that write "
        r"into a callback that runs on every rank.",
    ):
        make_test_learner(Tune())


def test_a_throttled_callback_keeps_its_placement() -> None:
    assert throttle(MetricsPrinter(), EpochEnd, every=2).placement == "rank_zero"
    assert throttle(Recorder(), BatchEnd, every=2).placement == "every_rank"
