"""What a new fit resets: every built-in callback starts a second fit (or a fit in a new
learner) as a new instance would, a resumed fit restores over the reset, and a custom callback
that keeps state without a reset() is named in a warning."""

from __future__ import annotations

import io
import logging
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
    "to set the state back as __init__ leaves it, or, to keep it across fits on purpose, as a method "
    "that keeps it."
)


def test_a_callback_that_keeps_state_without_reset_is_named(caplog: pytest.LogCaptureFixture) -> None:
    counter = Counter()
    learner = make_test_learner(counter, n_batches=2)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        learner.fit(1)
        assert caplog.text == ""  # a first fit has nothing left over
        learner.fit(1)
    assert caplog.messages == [WARNING]
    assert counter.count == 8  # it went on, as the warning says
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        make_test_learner(counter, n_batches=2).fit(1)  # reused in a new learner
        make_test_learner(throttle(Counter(), BatchEnd, every=2), n_batches=2).fit(1)
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
