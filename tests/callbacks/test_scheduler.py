"""Scheduler: the optimizer uses the scheduled value, per step or epoch, for chosen groups."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

from cadence import READ, Callback, ConflictError, Learner, on
from cadence.callbacks.scheduler import Scheduler
from cadence.events import BackwardEnd, EpochBegin, Event, FitBegin
from cadence.phases import Phase, TrainingPhase
from cadence.schedules import constant, cosine, linear, one_cycle
from cadence.testing import make_test_learner, regression_batches


class OptimizerProbe(Callback):
    """Reads the optimizer's param groups during the step, just before optimizer.step()."""

    state_access = {"optimizer": READ}

    def __init__(self, read: Callable[[dict[str, Any]], Any] = lambda g: g["lr"], group: int = 0) -> None:
        self.read, self.group = read, group
        self.seen: list[Any] = []

    @on(BackwardEnd, phase=TrainingPhase)
    def look(self, event: Event, phase: Phase, learner: Any) -> None:
        self.seen.append(self.read(learner.optimizer.param_groups[self.group]))


def two_group_learner(*callbacks: Callback, optimizer: str = "sgd") -> Learner:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(1, 2), torch.nn.Linear(2, 1))
    groups = [{"params": model[0].parameters()}, {"params": model[1].parameters()}]
    opt = (
        torch.optim.SGD(groups, lr=0.1, momentum=0.9, weight_decay=0.0)
        if optimizer == "sgd"
        else torch.optim.Adam(groups, lr=0.01)
    )
    batches = regression_batches(4, 8)
    return Learner(model, torch.nn.functional.mse_loss, opt, data=(batches, None), callbacks=callbacks, default_callbacks=False)


def test_the_optimizer_steps_with_the_scheduled_lr_each_batch() -> None:
    probe = OptimizerProbe()
    schedule = linear(0.1, 0.0)
    learner = make_test_learner(Scheduler(lr=schedule), probe, n_batches=4)
    learner.fit(2)
    assert probe.seen == [schedule(step, 8) for step in range(8)]
    assert learner.cbstate.hyperparams == {"lr/group0": 0.0}


def test_per_epoch_schedules_change_at_each_training_epoch() -> None:
    probe = OptimizerProbe()
    learner = make_test_learner(Scheduler(lr=linear(0.3, 0.1), unit="epoch"), probe, n_batches=2)
    learner.fit(3)
    assert probe.seen == pytest.approx([0.3, 0.3, 0.2, 0.2, 0.1, 0.1])


def test_momentum_and_weight_decay_for_chosen_groups_only() -> None:
    momentum, decay = OptimizerProbe(lambda g: g["momentum"], group=1), OptimizerProbe(lambda g: g["weight_decay"], 1)
    untouched = OptimizerProbe(lambda g: (g["momentum"], g["weight_decay"]), group=0)
    cycle = one_cycle(0.85, start=0.95, end=0.95, warmup=0.5)
    learner = two_group_learner(Scheduler(momentum=cycle, weight_decay=1e-4, param_groups=[1]), momentum, decay, untouched)
    learner.fit(1)
    assert momentum.seen == [cycle(step, 4) for step in range(4)] == pytest.approx([0.95, 0.85, 0.9, 0.95])
    assert decay.seen == [1e-4] * 4
    assert untouched.seen == [(0.9, 0.0)] * 4
    assert set(learner.cbstate.hyperparams) == {"momentum/group1", "weight_decay/group1"}


def test_adam_betas_are_scheduled_one_at_a_time() -> None:
    probe = OptimizerProbe(lambda g: g["betas"])
    learner = two_group_learner(Scheduler({"beta1": linear(0.9, 0.8)}, beta2=0.99), probe, optimizer="adam")
    learner.fit(1)
    assert [b[0] for b in probe.seen] == pytest.approx([0.9, 0.8667, 0.8333, 0.8], abs=1e-4)
    assert {b[1] for b in probe.seen} == {0.99}
    assert learner.cbstate.hyperparams["beta1/group1"] == pytest.approx(0.8)


def torch_run(make: Callable[[torch.optim.Optimizer], Any], unit: str, n_epochs: int = 2) -> tuple[list[float], list[float]]:
    """The lrs a learner's optimizer steps with under Scheduler(make(optimizer)), and the lrs
    of the same torch scheduler driven by hand."""
    probe = OptimizerProbe()
    learner = make_test_learner(probe, n_batches=3)
    learner.add_callback(Scheduler(make(learner.optimizer), unit=unit))  # type: ignore[arg-type]
    learner.fit(n_epochs)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    scheduler, expected = make(optimizer), []
    for _ in range(n_epochs):
        for _ in range(3):
            expected.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            if unit == "step":
                scheduler.step()
        if unit == "epoch":
            scheduler.step()
    return probe.seen, expected


def test_a_torch_lr_scheduler_per_step() -> None:
    seen, expected = torch_run(lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.5, total_steps=6), "step")
    assert seen == pytest.approx(expected) and len(set(seen)) > 3


def test_a_torch_lr_scheduler_per_epoch() -> None:
    seen, expected = torch_run(lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5), "epoch", 3)
    assert seen == pytest.approx(expected) and seen[0] == 0.1 and seen[-1] == 0.025


def test_position_survives_fits_and_checkpoints_without_pickle() -> None:
    scheduler = Scheduler(lr=cosine(0.1, 0.001))
    learner = make_test_learner(scheduler, n_batches=4)
    learner.fit(1)
    assert scheduler.position == 4
    buffer = io.BytesIO()
    torch.save(scheduler.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert state == {"position": 4}
    resumed, probe = Scheduler(lr=cosine(0.1, 0.001)), OptimizerProbe()
    resumed.load_state_dict(state)
    make_test_learner(resumed, probe, n_batches=4).fit(2)
    # fit(2) is a run of 8 steps, whatever the position: the schedule goes on from step 4, and
    # the 4 steps past its end hold its last value.
    assert probe.seen == pytest.approx([cosine(0.1, 0.001)(step, 8) for step in range(4, 12)])
    assert resumed.position == 12


def test_the_run_length_depends_on_the_fit_only() -> None:
    scheduler, probe = Scheduler(lr=linear(0.1, 0.0)), OptimizerProbe()
    learner = make_test_learner(scheduler, probe, n_batches=2)
    learner.fit(1)
    learner.fit(3)  # 6 steps, from the start again
    assert probe.seen == pytest.approx([0.1, 0.0] + [linear(0.1, 0.0)(step, 6) for step in range(6)])
    epochs, probe = Scheduler(lr=linear(0.3, 0.1), unit="epoch"), OptimizerProbe()
    learner = make_test_learner(epochs, probe, n_batches=1)
    learner.fit(1)
    learner.fit(3)
    assert probe.seen == pytest.approx([0.3, 0.3, 0.2, 0.1])


class LoadAt(Callback):
    """Loads ``state`` into ``scheduler`` once, at ``FitBegin`` or the training ``EpochBegin``,
    after the scheduler's own handler there."""

    run_after = (Scheduler,)

    def __init__(self, scheduler: Scheduler, state: dict[str, Any], event: type[Event]) -> None:
        self.scheduler, self.state, self.event = scheduler, state, event

    @on(FitBegin)
    def fit_begin(self, event: Event, phase: Phase, learner: Any) -> None:
        self.load(event)

    @on(EpochBegin, phase=TrainingPhase)
    def epoch_begin(self, event: Event, phase: Phase, learner: Any) -> None:
        self.load(event)

    def load(self, event: Event) -> None:
        if type(event) is self.event and self.state:
            self.scheduler.load_state_dict(self.state)
            self.state = {}


@pytest.mark.parametrize("when", [None, FitBegin, EpochBegin], ids=["before fit", "after FitBegin", "after EpochBegin"])
def test_a_loaded_position_is_exact_whenever_it_is_loaded(when: type[Event] | None) -> None:
    scheduler, probe = Scheduler(lr=linear(0.1, 0.0)), OptimizerProbe()
    learner = make_test_learner(scheduler, probe, n_batches=4)
    if when is None:  # before the scheduler's first fit (a later fit resets it first)
        scheduler.load_state_dict({"position": 3})
    else:
        learner.fit(2)  # the position is now 8: the load must replace it, and the run's length not depend on it
        probe.seen.clear()
        learner.add_callback(LoadAt(scheduler, {"position": 3}, when))
    learner.fit(2)
    assert probe.seen == pytest.approx([linear(0.1, 0.0)(step, 8) for step in range(3, 11)])
    assert scheduler.position == 11


def test_torch_scheduler_state_round_trips() -> None:
    learner = make_test_learner(n_batches=2)
    scheduler = Scheduler(torch.optim.lr_scheduler.StepLR(learner.optimizer, step_size=1, gamma=0.5))
    learner.add_callback(scheduler)
    learner.fit(1)
    state = scheduler.state_dict()
    assert state["position"] == 2 and state["lr_scheduler"]["last_epoch"] == 2
    with pytest.raises(ValueError, match=r"expects the keys \['lr_scheduler', 'position'\]"):
        scheduler.load_state_dict({"position": 1})
    scheduler.load_state_dict(state)


class Unsized:
    def __init__(self, batches: list[Any]) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[Any]:
        return iter(self.batches)


def test_data_without_len_needs_total_before_any_epoch() -> None:
    batches = regression_batches(4, 8)
    learner = make_test_learner(Scheduler(lr=linear(0.1, 0.0)))
    message = (
        r"^Scheduler\(unit='step'\) cannot tell how many batches the run has: the training data has "
        r"no len\(\)\. Pass Scheduler\(\.\.\., total=N\), N the number of batches the schedules span\."
    )
    with pytest.raises(TypeError, match=message) as info:
        learner.fit(1, data=(Unsized(batches), None))
    # At FitBegin, before any epoch:
    assert "Raised by Scheduler.fit_begin while handling FitBegin in Phase." in info.value.__notes__
    probe = OptimizerProbe()
    make_test_learner(Scheduler(lr=linear(0.1, 0.0), total=4), probe).fit(1, data=(Unsized(batches), None))
    assert probe.seen == pytest.approx([0.1, 0.0667, 0.0333, 0.0], abs=1e-4)


def test_two_schedulers_of_different_hyperparameters_combine() -> None:
    lr, momentum = OptimizerProbe(), OptimizerProbe(lambda g: g["momentum"])
    learner = two_group_learner(Scheduler(lr=0.05), Scheduler(momentum=0.5), lr, momentum)
    learner.fit(1)
    assert lr.seen == [0.05] * 4 and momentum.seen == [0.5] * 4
    two_group_learner(Scheduler(lr=0.05, param_groups=[0]), Scheduler(lr=0.01, param_groups=[1]))


def test_two_schedulers_of_the_same_hyperparameter_conflict() -> None:
    with pytest.raises(ConflictError, match=r"Scheduler#1 and Scheduler#2 cannot be used together"):
        make_test_learner(Scheduler(lr=0.1), Scheduler(lr=constant(0.2), param_groups=[0]))


def test_lr_tensors_are_filled_in_place() -> None:
    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=torch.tensor(0.01))
    lr = optimizer.param_groups[0]["lr"]
    batches = regression_batches(2, 4)
    Learner(model, torch.nn.functional.mse_loss, optimizer, data=(batches, None), callbacks=[Scheduler(lr=0.002)]).fit(1)
    assert optimizer.param_groups[0]["lr"] is lr and float(lr) == pytest.approx(0.002)


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: Scheduler(), ValueError, r"nothing to schedule; e.g. Scheduler\(lr=cosine"),
        (lambda: Scheduler([0.1]), TypeError, r"expects schedules by name, e.g. Scheduler\(lr=cosine"),
        (lambda: Scheduler(lr="fast"), TypeError, r"Scheduler\(lr=...\) expects a schedule, a callable \(step, total\)"),
        (lambda: Scheduler(betas=0.9), ValueError, r"Schedule \"beta1\" and \"beta2\" separately"),
        (lambda: Scheduler({"lr": 0.1}, lr=0.2), ValueError, r"schedule for lr twice"),
        (lambda: Scheduler(lr=0.1, unit="batch"), ValueError, r'unit=...\) is "step" \(per batch\) or "epoch"'),
        (lambda: Scheduler(lr=0.1, total=0), ValueError, r"total=...\) is the run's length in steps, an int >= 1"),
        (lambda: Scheduler(lr=0.1, param_groups=[0, 0]), ValueError, r"distinct group indices >= 0, e.g. \[0, 1\]"),
        (lambda: Scheduler(lr=0.1, param_groups=1), TypeError, r"expects a list of group indices"),
    ],
)
def test_constructor_errors_say_what_to_write(make: Callable[[], Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        make()


def test_torch_scheduler_errors() -> None:
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)
    with pytest.raises(TypeError, match=r"does not drive torch's ReduceLROnPlateau, which needs a metric .* e\.g\. ReduceLROnPlateau\(monitor=\"valid/loss\", factor=0\.1, patience=10\)"):
        Scheduler(plateau)
    step = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
    with pytest.raises(TypeError, match=r"takes no schedules, param_groups or total"):
        Scheduler(step, momentum=0.9)
    with pytest.raises(ValueError, match=r"LRScheduler built on a different optimizer .* build it on learner.optimizer"):
        make_test_learner(Scheduler(step))


def test_build_errors_name_the_optimizer_and_the_fix() -> None:
    with pytest.raises(ValueError, match=r"names group 2, but SGD has 2 param group\(s\), numbered from 0"):
        two_group_learner(Scheduler(lr=0.1, param_groups=[2]))
    with pytest.raises(ValueError, match=r"'momentum', which param group 0 of Adam does not have \(Adam-like .*\"beta1\""):
        two_group_learner(Scheduler(momentum=0.9), optimizer="adam")
    with pytest.raises(ValueError, match=r"schedules 'units', which .* It has: lr, momentum"):
        make_test_learner(Scheduler(lr=0.1, units=0.1))


def test_repr() -> None:
    assert repr(Scheduler(lr=constant(0.1), unit="epoch")) == "Scheduler(lr=constant(0.1), unit='epoch')"
