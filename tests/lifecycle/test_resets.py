"""What a new fit resets: every built-in callback starts a second fit (or a fit in a new
learner) as a new instance would, a resumed fit restores over the reset, and a custom callback
that keeps state without a reset() is named in a warning."""

from __future__ import annotations

import copy
import gc
import io
import logging
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console

from cadence import (
    READ,
    Callback,
    Checkpointer,
    EarlyStopping,
    GradientAccumulation,
    LambdaCallback,
    Learner,
    Metrics,
    ProgressPrinter,
    Recorder,
    ReduceLROnPlateau,
    Scheduler,
    StopOnNaNLoss,
    on,
    throttle,
)
from cadence.checkpointing.files import list_checkpoints
from cadence.events import BackwardEnd, BatchEnd, FitBegin
from cadence.phases import Phase, TrainingPhase
from cadence.schedules import cosine, one_cycle
from cadence.testing import make_test_learner
from helpers import LossLog

LOGGER = "cadence.resets"


def same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return bool(a == b)


def quiet() -> ProgressPrinter:
    return ProgressPrinter(console=Console(file=io.StringIO()))


# Reset before every fit: (the callback, what it needs beside it).
PER_FIT: dict[str, Callable[[], tuple[Callback, list[Callback]]]] = {
    "Scheduler": lambda: (Scheduler(lr=one_cycle(0.2)), []),
    "EarlyStopping": lambda: (EarlyStopping(patience=1, min_delta=1.0, restore_best_weights=True), [Metrics()]),
    "ReduceLROnPlateau": lambda: (ReduceLROnPlateau(patience=0, cooldown=5), [Metrics()]),
    "GradientAccumulation": lambda: (GradientAccumulation(3), []),
}


def same_learners(a: Learner, b: Learner) -> bool:
    entries = a.cbstate.entries()
    return (
        all(same(x.state_dict(), y.state_dict()) for x, y in zip(a.callbacks, b.callbacks))
        and entries.keys() == b.cbstate.entries().keys()
        and all(same(getattr(v, "epochs", v), getattr(getattr(b.cbstate, k), "epochs", getattr(b.cbstate, k))) for k, v in entries.items())
        and torch.equal(a.model.weight, b.model.weight)
    )


@pytest.mark.parametrize("make", PER_FIT.values(), ids=PER_FIT.keys())
def test_a_second_fit_runs_as_with_a_new_instance(make: Callable[[], tuple[Callback, list[Callback]]]) -> None:
    again, replaced = (make_test_learner(make()[0], *make()[1], n_batches=5, lr=0.5) for _ in range(2))
    again.fit(2)
    replaced.fit(2)
    replaced.replace_callback(make()[0])  # the same learner, a new instance for the second fit
    again.fit(3)
    replaced.fit(3)
    assert same_learners(again, replaced)


# Reset only in another learner: a second fit of the same learner counts on.
PER_LEARNER: dict[str, Callable[[], list[Callback]]] = {
    "Recorder, Metrics, ProgressPrinter, StopOnNaNLoss": lambda: [Recorder(), Metrics(), quiet(), StopOnNaNLoss()],
    "throttle": lambda: [throttle(Recorder(), BatchEnd, every=3), Metrics()],
}


@pytest.mark.parametrize("make", PER_LEARNER.values(), ids=PER_LEARNER.keys())
def test_counts_go_on_in_the_learner_and_start_afresh_in_another(make: Callable[[], list[Callback]]) -> None:
    callbacks = make()
    first = make_test_learner(*callbacks, n_batches=5, lr=0.5)
    first.fit(2)
    first.fit(3)
    once = make_test_learner(*make(), n_batches=5, lr=0.5)
    once.fit(5)
    assert same_learners(first, once)  # two fits of one learner count as one of five epochs
    reused = make_test_learner(*callbacks, n_batches=5, lr=0.5)  # the same instances
    fresh = make_test_learner(*make(), n_batches=5, lr=0.5)
    reused.fit(2)
    fresh.fit(2)
    assert same_learners(reused, fresh)


class LrLog(Callback):
    state_access = {"optimizer": READ}

    def __init__(self) -> None:
        self.rates: list[float] = []

    @on(BackwardEnd, phase=TrainingPhase)
    def log(self, event: Any, phase: Phase, learner: Any) -> None:
        self.rates.append(self.rate(learner.optimizer))

    def rate(self, optimizer: torch.optim.Optimizer) -> float:
        return float(optimizer.param_groups[0]["lr"])

    def reset(self) -> None:
        self.rates = []


@pytest.mark.parametrize(
    "scheduler",
    [lambda opt: Scheduler(lr=one_cycle(0.1)), lambda opt: Scheduler(torch.optim.lr_scheduler.OneCycleLR(opt, 0.1, total_steps=8))],
    ids=["one_cycle", "torch OneCycleLR"],
)
def test_a_second_fit_runs_the_one_cycle_again(scheduler: Callable[[torch.optim.Optimizer], Scheduler]) -> None:
    log = LrLog()
    learner = make_test_learner(log, n_batches=4)
    learner.add_callback(scheduler(learner.optimizer))
    learner.fit(2)
    first = log.rates
    learner.fit(2)  # the repro: every step at the schedule's last rate (torch's raised past total_steps)
    assert log.rates == first and len(set(first)) == 8


def test_a_resumed_fit_restores_over_the_reset(tmp_path: Path) -> None:
    def build(folder: Path, every_epochs: int | None = 1) -> tuple[Learner, LrLog]:
        log = LrLog()
        checkpointer = Checkpointer(folder, every_epochs=every_epochs)
        return make_test_learner(log, Scheduler(lr=cosine(0.1, 0.0)), Recorder(), checkpointer, n_batches=4), log

    learner, log = build(tmp_path / "run")
    learner.fit(3)
    expected = log.rates[4:]
    path = list_checkpoints(tmp_path / "run")[0]  # after epoch 2
    assert path.name.endswith("epoch2-batch0.pt")
    again, log = build(tmp_path / "again", every_epochs=None)  # a folder belongs to one run: save nothing
    again.fit(1)
    again.fit(3, resume=path)  # reset, then the checkpoint's position (8 steps) and history
    assert log.rates == expected[4:] and len(log.rates) == 4
    assert again.cbstate.history[TrainingPhase()].epochs == 3


class Counter(Callback):
    """Counts batches; keeps the count in checkpoints."""

    def __init__(self) -> None:
        self.count = 0

    @on(BatchEnd)
    def add(self, event: Any, phase: Phase, learner: Any) -> None:
        self.count += 1

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = int(state["count"])


WARNING = (
    "Counter starts this fit with the state its previous fit left: it keeps state (state_dict) but has "
    "no reset(), which fit calls before FitBegin of every fit after the first. Implement Counter.reset() "
    "to set the state back as __init__ leaves it (and set reset_when = \"learner\" on the class if its "
    "counts should go on across the fits of one learner, and start afresh only in another), or, to keep "
    "the state across fits on purpose, as a method that keeps it. This is said once per callback."
)


def test_a_callback_that_keeps_state_without_reset_is_named_once(caplog: pytest.LogCaptureFixture) -> None:
    counter = Counter()
    learner = make_test_learner(counter, n_batches=2)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        learner.fit(1)
        assert caplog.text == ""  # a first fit has nothing left over
        learner.fit(1)
        learner.fit(1)  # said once, not at every fit
        make_test_learner(counter, n_batches=2).fit(1)  # nor again when reused in a new learner
    assert caplog.messages == [WARNING]
    assert counter.count == 16  # it went on, as the warning says
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        throttled = make_test_learner(throttle(Counter(), BatchEnd, every=2), n_batches=2)
        throttled.fit(1)
        throttled.fit(1)  # another instance: said for it too (the wrapper answers for it)
    assert caplog.messages == [WARNING]


def test_reset_runs_before_fit_begin_from_the_second_fit(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []

    class Tracked(Counter):
        def reset(self) -> None:
            calls.append("reset")
            self.count = 0

        @on(FitBegin)
        def begin(self, event: Any, phase: Phase, learner: Any) -> None:
            calls.append(f"FitBegin {self.count}")

    tracked = Tracked()
    learner = make_test_learner(tracked, n_batches=2)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        learner.fit(1)
        learner.fit(1)
        make_test_learner(throttle(tracked, BatchEnd, every=2), n_batches=2).fit(1)
    assert calls == ["FitBegin 0", "reset", "FitBegin 0", "reset", "FitBegin 0"]
    assert caplog.text == ""


def test_state_loaded_before_the_first_fit_is_kept() -> None:
    log = LossLog()
    log.load_state_dict({"losses": [1.0, 2.0]})
    make_test_learner(log, n_batches=2).fit(1)
    assert log.losses[:2] == [1.0, 2.0] and len(log.losses) == 4


# ---- state loaded between fits, callbacks joining during a fit, reused producers ----------------


def test_state_loaded_between_fits_is_kept_for_the_next_fit() -> None:
    scheduler = Scheduler(lr=one_cycle(0.1))
    stopper = EarlyStopping(patience=1, min_delta=1.0)
    learner = make_test_learner(scheduler, stopper, Metrics(), n_batches=2)
    learner.fit(1)
    scheduler.load_state_dict({"position": 1})
    stopper.load_state_dict({**stopper.state_dict(), "best": -1.0, "wait": 0})  # nothing can beat -1
    learner.fit(3)
    assert len(learner.cbstate.metrics.epochs["valid/loss"]) == 1 + 1  # stopped by the loaded best
    assert scheduler.position == 1 + 2  # the repro: 2, the load thrown away by the reset
    learner.fit(1)  # nothing loaded since the last fit: reset as usual
    assert scheduler.position == 2 and stopper.best is not None and stopper.best > 0


def test_state_a_resumed_fit_restored_is_reset_by_the_next_fit(tmp_path: Path) -> None:
    log = LrLog()
    learner = make_test_learner(log, Scheduler(lr=cosine(0.1, 0.0)), Checkpointer(tmp_path / "run"), n_batches=4)
    learner.fit(3)
    path = list_checkpoints(tmp_path / "run")[0]  # after epoch 2 of 3
    again = make_test_learner(LrLog(), Scheduler(lr=cosine(0.1, 0.0)), Checkpointer(tmp_path / "again", every_epochs=None), n_batches=4)
    again.fit(3, resume=path)  # loads the Scheduler's position during the fit
    probe = again.get_callback(LrLog)
    assert isinstance(probe, LrLog)
    probe.reset()
    again.fit(3)  # starts the schedule over: the resume's load is no load between fits
    assert probe.rates == log.rates


class Losses(LossLog):
    def reset(self) -> None:
        self.losses = []


def test_a_callback_that_joins_during_a_fit_is_reset_by_the_next() -> None:
    log = Losses()

    def add_log(event: Any, phase: Phase, learner: Any) -> None:
        if log not in target.callbacks:
            target.add_callback(log)

    target = make_test_learner(LambdaCallback(add_log, FitBegin), n_batches=2)
    target.fit(1)
    assert len(log.losses) == 2
    target.fit(1)  # the repro: it was seen first at this fit's start, so not reset: 4 losses
    assert len(log.losses) == 2


def test_a_callback_that_joins_during_a_fit_after_a_fit_elsewhere_is_reset_as_it_joins() -> None:
    log = Losses()
    make_test_learner(log, n_batches=3).fit(1)
    target = make_test_learner(LambdaCallback(lambda event, phase, learner: target.add_callback(log), FitBegin), n_batches=2)
    target.fit(1)
    assert len(log.losses) == 2  # this fit's only


@pytest.mark.parametrize("entry", ["history", "metrics"])
def test_a_producer_reused_in_another_learner_leaves_the_old_learners_values(entry: str) -> None:
    producer = Recorder() if entry == "history" else Metrics()
    first = make_test_learner(producer, n_batches=3)
    first.fit(2)
    before = copy.deepcopy(getattr(first.cbstate, entry))
    make_test_learner(producer, n_batches=2).fit(1)  # reset for the new learner: counts from zero
    assert getattr(first.cbstate, entry) == before  # the repro: Recorder emptied the first's history


def test_gradient_accumulation_lets_go_of_the_old_learners_parameters() -> None:
    accumulation = GradientAccumulation(2)
    learner = make_test_learner(accumulation, n_batches=2)
    learner.fit(1)
    weight = weakref.ref(learner.model.weight)
    del learner
    accumulation.reset()  # as the fit of a new learner does before its first EpochBegin
    gc.collect()
    assert weight() is None
