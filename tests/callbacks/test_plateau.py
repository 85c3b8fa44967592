"""ReduceLROnPlateau: the learning rates of torch's ReduceLROnPlateau step for step, its
arguments checked, its place against Scheduler and loggers, exact resume, and a new fit."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import pytest
import torch

from cadence import READ, Callback, Checkpointer, ConflictError, LambdaCallback, Learner, Metrics, ReduceLROnPlateau, Scheduler, on
from cadence.checkpointing.files import list_checkpoints
from cadence.events import EpochBegin, EpochEnd, FitEnd
from cadence.phases import Phase, TrainingPhase, ValidationPhase
from cadence.schedules import cosine
from cadence.testing import make_test_learner, regression_batches
from helpers import ScriptedMetrics, run_order

# Flat stretches, noise, a fall, a rise and a NaN: every branch of torch's step.
VALUES = [1.0, 0.9, 0.95, 0.9, 0.9, 0.85, 0.86, 0.87, 0.5, 0.49995, 0.6, 0.7, float("nan"), 0.4, 0.4, 0.41, 0.39, 0.5, 0.5, 0.5]


class LrLog(Callback):
    """Every param group's learning rate in each training epoch, as it ends."""

    state_access = {"optimizer": READ}

    def __init__(self) -> None:
        self.rates: list[list[float]] = []

    @on(EpochEnd, phase=TrainingPhase)
    def log(self, event: Any, phase: Phase, learner: Any) -> None:
        self.rates.append(rates(learner.optimizer))


def rates(optimizer: torch.optim.Optimizer) -> list[float]:
    return [float(g["lr"]) for g in optimizer.param_groups]


def two_groups() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1)
    return model, torch.optim.SGD([{"params": [model.weight]}, {"params": [model.bias], "lr": 0.05}], lr=0.2)


def torch_rates(values: list[float], kwargs: dict[str, Any]) -> list[list[float]]:
    """The rates a hand-written loop with torch's scheduler trains each epoch at, and has after
    its last ``step``."""
    _, optimizer = two_groups()
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, **kwargs)
    found = []
    for value in values:
        found.append(rates(optimizer))  # the training epoch
        plateau.step(value)  # after its validation
    return [*found, rates(optimizer)]


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"patience": 0, "factor": 0.5},
        {"patience": 1, "factor": 0.5, "cooldown": 2},
        {"mode": "max", "patience": 1, "factor": 0.3, "threshold": 0.05, "threshold_mode": "abs"},
        {"mode": "max", "patience": 0, "factor": 0.5, "cooldown": 1, "min_lr": 0.04},
        {"patience": 0, "factor": 0.1, "min_lr": [1e-3, 1e-4], "threshold": 0.0},
        {"patience": 0, "factor": 0.9, "min_lr": 0.17, "eps": 0.015},  # 0.2 -> 0.18, then 0.18 -> 0.17 is below eps
        {"patience": 2, "threshold": 0.1, "threshold_mode": "rel", "cooldown": 1},
    ],
    ids=lambda kwargs: ",".join(f"{k}={v}" for k, v in kwargs.items()) or "defaults",
)
@pytest.mark.parametrize("flip", [False, True], ids=["as is", "negated"])
def test_the_rates_equal_torchs_step_for_step(kwargs: dict[str, Any], flip: bool) -> None:
    values = [-v for v in VALUES] if flip else VALUES
    model, optimizer = two_groups()
    log = LrLog()
    callbacks = [log, ReduceLROnPlateau("valid/score", **kwargs), ScriptedMetrics(values)]
    batches = regression_batches(1)
    learner = Learner(model, torch.nn.functional.mse_loss, optimizer, data=(batches, batches), callbacks=callbacks, default_callbacks=False)
    learner.fit(len(values))
    expected = torch_rates(values, kwargs)
    assert [*log.rates, rates(optimizer)] == expected
    assert len({tuple(r) for r in expected}) > 1 or kwargs == {}  # the rates change, except with the defaults


def test_a_training_key_works_without_validation() -> None:
    plateau = ReduceLROnPlateau("train/score", patience=0, factor=0.5)
    learner = make_test_learner(plateau, ScriptedMetrics([3, 4, 5]), n_batches=1, lr=0.4)
    learner.fit(3, data=(regression_batches(1), None))
    assert learner.optimizer.param_groups[0]["lr"] == 0.1
    assert learner.cbstate.hyperparams == {"lr/group0": 0.1}


def test_it_runs_after_metrics_and_before_readers_of_the_rates() -> None:
    class RateLogger(Callback):
        state_access = {"cbstate.hyperparams": READ}

        @on(EpochBegin, phase=TrainingPhase)
        @on(FitEnd)
        def log(self, event: Any, phase: Phase, learner: Any) -> None:
            pass

    learner = make_test_learner(RateLogger(), ReduceLROnPlateau(), Metrics())
    assert run_order(learner, EpochBegin, TrainingPhase) == ["Metrics.epoch_begin", "ReduceLROnPlateau.epoch_begin", "RateLogger.log"]
    assert run_order(learner, FitEnd, Phase) == ["ReduceLROnPlateau.fit_end", "RateLogger.log"]
    assert run_order(learner, EpochEnd, ValidationPhase) == ["Metrics.epoch_end"]  # it decides later


def test_a_logger_at_epoch_end_sees_the_rate_the_epoch_trained_at() -> None:
    seen: list[float] = []
    logger = LambdaCallback(
        lambda event, phase, learner: seen.append(learner.cbstate.hyperparams["lr/group0"]),
        EpochEnd, ValidationPhase, state_access={"cbstate.hyperparams": READ},
    )
    log = LrLog()
    learner = make_test_learner(logger, log, ReduceLROnPlateau("valid/score", patience=0, factor=0.5), ScriptedMetrics([3, 4, 5]), n_batches=1, lr=0.4)
    learner.fit(3)
    assert seen == [r[0] for r in log.rates] == [0.4, 0.4, 0.2]
    assert learner.cbstate.hyperparams == {"lr/group0": 0.1}  # the last epoch's value is taken at FitEnd


def test_with_a_scheduler_of_other_hyperparameters_in_any_order() -> None:
    for callbacks in ([Scheduler(momentum=cosine(0.9, 0.8)), ReduceLROnPlateau(patience=0)], [ReduceLROnPlateau(patience=0), Scheduler(momentum=cosine(0.9, 0.8))]):
        learner = make_test_learner(*callbacks, Metrics(), lr=1.5, n_batches=4)
        learner.optimizer.param_groups[0]["momentum"] = 0.9
        assert learner.fit(2).stopped is None
        assert sorted(learner.cbstate.hyperparams) == ["lr/group0", "momentum/group0"]


@pytest.mark.parametrize("scheduler", [lambda opt: Scheduler(lr=cosine(0.1, 0.01)), lambda opt: Scheduler(torch.optim.lr_scheduler.StepLR(opt, 2))])
def test_with_a_scheduler_of_the_learning_rate_is_refused(scheduler: Any) -> None:
    learner = make_test_learner(Metrics())
    learner.add_callback(scheduler(learner.optimizer))
    with pytest.raises(
        ConflictError,
        match=(
            r"ReduceLROnPlateau and Scheduler\(.*\) both set the learning rate: the Scheduler would undo every "
            r"reduction at its next step\. Set lr with one of them; a Scheduler can still schedule other "
            r"hyperparameters beside ReduceLROnPlateau, e\.g\. Scheduler\(momentum=cosine\(0\.95, 0\.85\)\)"
        ),
    ):
        learner.add_callback(ReduceLROnPlateau())


def test_two_are_refused() -> None:
    with pytest.raises(ConflictError, match=r"ReduceLROnPlateau#1 and ReduceLROnPlateau#2 cannot be used together"):
        make_test_learner(ReduceLROnPlateau(), ReduceLROnPlateau("train/loss"), Metrics())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"factor": 1.0}, r"ReduceLROnPlateau\(factor=1\.0\): the rate is multiplied by factor, a number between 0 and 1 \(exclusive\), e\.g\. factor=0\.1\."),
        ({"patience": -1}, r"ReduceLROnPlateau\(patience=-1\): use an int >= 0, e\.g\. patience=2\."),
        ({"cooldown": 0.5}, r"ReduceLROnPlateau\(cooldown=0\.5\): use an int >= 0, e\.g\. cooldown=2\."),
        ({"threshold": -1e-4}, r"ReduceLROnPlateau\(threshold=-0\.0001\): use a number >= 0\."),
        ({"threshold_mode": "relative"}, r"ReduceLROnPlateau\(threshold_mode='relative'\): expected \"rel\" \(relative to the best value\) or \"abs\" \(absolute\); write e\.g\. ReduceLROnPlateau\(threshold_mode=\"rel\"\)\."),
        ({"min_lr": -1}, r"ReduceLROnPlateau\(min_lr=-1\): use a number >= 0, or a list of them with one per param group, e\.g\. min_lr=1e-6 or min_lr=\[1e-6, 1e-5\]\."),
        ({"mode": "lowest"}, r"ReduceLROnPlateau\(mode='lowest'\): expected \"min\""),
    ],
)
def test_arguments_are_checked_at_construction(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ReduceLROnPlateau(**kwargs)


def test_one_min_lr_per_group_is_checked_when_the_learner_is_built() -> None:
    with pytest.raises(ValueError, match=r"ReduceLROnPlateau\(min_lr=\[0\.1, 0\.2\]\) has 2 values, but SGD has 1 param group\(s\); give one per group, or a single number for all\."):
        make_test_learner(ReduceLROnPlateau(min_lr=[0.1, 0.2]), Metrics())


def plateau_learner(folder: Path) -> Learner:
    callbacks = [ReduceLROnPlateau(patience=0, factor=0.5, cooldown=1), Metrics(), Checkpointer(folder, every_steps=3, keep_last=100)]
    return make_test_learner(*callbacks, n_batches=4, lr=1.5)


def test_a_resume_from_any_checkpoint_lowers_the_rate_where_the_run_did(tmp_path: Path) -> None:
    reference = plateau_learner(tmp_path / "run")
    reference.fit(5)
    plateau = reference.get_callback(ReduceLROnPlateau)
    assert plateau is not None
    expected = (reference.optimizer.param_groups[0]["lr"], plateau.state_dict(), reference.cbstate.metrics.epochs)
    assert expected[0] < 1.5 / 2  # at least two reductions
    for i, path in enumerate(list_checkpoints(tmp_path / "run")):
        resumed = plateau_learner(tmp_path / f"again{i}")  # a folder belongs to one run
        resumed.fit(5, resume=path)
        got = resumed.get_callback(ReduceLROnPlateau)
        assert got is not None
        assert (resumed.optimizer.param_groups[0]["lr"], got.state_dict(), resumed.cbstate.metrics.epochs) == expected, path.name
        assert torch.equal(resumed.model.weight, reference.model.weight), path.name


def test_a_new_fit_forgets_the_counts_and_keeps_the_rate() -> None:
    plateau = ReduceLROnPlateau("valid/score", patience=1, factor=0.5, cooldown=3)
    learner = make_test_learner(plateau, ScriptedMetrics([3, 4, 5]), n_batches=1, lr=0.4)
    learner.fit(3)
    assert (plateau.best, plateau.cooldown_left, learner.optimizer.param_groups[0]["lr"]) == (3, 3, 0.2)
    learner.fit(2)  # the script starts over: 3 is the best again, 4 one bad epoch, not in cooldown
    assert (plateau.best, plateau.bad_epochs, plateau.cooldown_left) == (3, 1, 0)
    assert learner.optimizer.param_groups[0]["lr"] == 0.2  # as the previous fit left it (Keras does so)
    assert math.isinf(ReduceLROnPlateau().best)


def test_a_tensor_learning_rate_stays_a_tensor() -> None:
    # Capturable and fused optimizers keep lr as a tensor; replacing it with a float would break them.
    model = torch.nn.Linear(1, 1, bias=False)
    optimizer = torch.optim.Adam(model.parameters(), lr=torch.tensor(1.5), foreach=False)
    batches = regression_batches(4)
    callbacks = [ReduceLROnPlateau(patience=0, factor=0.5), Metrics()]
    learner = Learner(model, torch.nn.functional.mse_loss, optimizer, data=(batches, batches), callbacks=callbacks, default_callbacks=False)
    learner.fit(4)
    rate = optimizer.param_groups[0]["lr"]
    assert isinstance(rate, torch.Tensor) and float(rate) < 1.5
    assert learner.cbstate.hyperparams == {"lr/group0": float(rate)}


def test_a_param_group_added_after_the_build_needs_its_own_min_lr() -> None:
    learners = [
        make_test_learner(ReduceLROnPlateau("valid/score", patience=0, factor=0.5, min_lr=min_lr), ScriptedMetrics([3, 4, 5]), n_batches=1, lr=0.4)
        for min_lr in (0.0, [0.0])
    ]
    for learner in learners:
        learner.optimizer.add_param_group({"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.2})
    learners[0].fit(3)  # one min_lr is every group's, as in torch
    assert rates(learners[0].optimizer) == [0.1, 0.05]
    with pytest.raises(
        ValueError,
        match=(
            r"^ReduceLROnPlateau\(min_lr=\[0\.0\]\) has one value per param group the optimizer had when the learner "
            r"was built, 1, but it has 2 now\. Add param groups before building the learner, or give one min_lr "
            r"for all groups, e\.g\. min_lr=0\.0\."
        ),
    ):
        learners[1].fit(3)


def keras_rates(values: list[float], patience: int, cooldown: int, min_delta: float) -> list[float]:
    """The rate after each epoch of Keras 3's ReduceLROnPlateau (factor 0.5, min mode, from 1),
    its on_epoch_end restated: cooldown counted down first, and the epoch that lowers the rate
    counts towards patience."""
    rate, best, wait, cooling, rates = 1.0, math.inf, 0, 0, []
    for value in values:
        if cooling > 0:
            cooling, wait = cooling - 1, 0
        if value < best - min_delta:
            best, wait = value, 0
        elif cooling == 0:
            wait += 1
            if wait >= patience:
                rate, cooling, wait = rate * 0.5, cooldown, 0
        rates.append(rate)
    return rates


@pytest.mark.parametrize("cooldown", range(4))
@pytest.mark.parametrize("patience", range(4))
def test_keras_patience_and_cooldown_are_one_more_than_torchs(patience: int, cooldown: int) -> None:
    # docs/coming-from.md: Keras' patience=p, cooldown=c, min_delta=d are patience=max(p - 1, 0),
    # cooldown=max(c - 1, 0), threshold=d, threshold_mode="abs" here (equal to torch's, above).
    generator = random.Random(patience * 4 + cooldown)
    for _ in range(30):
        values = [generator.randrange(4) + generator.random() / 10 for _ in range(16)]
        p = torch.nn.Parameter(torch.zeros(1))
        optimizer = torch.optim.SGD([p], lr=1.0)
        mapped = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, factor=0.5, patience=max(patience - 1, 0), cooldown=max(cooldown - 1, 0), threshold=1e-4, threshold_mode="abs"
        )
        got = []
        for value in values:
            mapped.step(value)
            got.append(optimizer.param_groups[0]["lr"])
        assert got == keras_rates(values, patience, cooldown, 1e-4), values
