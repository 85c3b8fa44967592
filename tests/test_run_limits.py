"""Quick runs: limit_batches, fast_dev_run and overfit_batches (Lightning's names and meaning)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from cadence import READ, Callback, Checkpointer, Metrics, Recorder, Scheduler, on
from cadence.events import BatchBegin, Event, FitBegin
from cadence.phases import Phase, TrainingPhase
from cadence.run_limits import RunLimits, limited
from cadence.schedules import linear
from cadence.testing import make_test_learner, regression_batches


class Batches(Callback):
    """Records the first input of every batch, per phase."""

    state_access = {"batch.x": READ}

    def __init__(self) -> None:
        self.seen: dict[str, list[float]] = {}

    @on(BatchBegin)
    def record(self, event: Event, phase: Phase, learner: Any) -> None:
        self.seen.setdefault(phase.name, []).append(float(learner.batch.x[0, 0]))


def firsts(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> list[float]:
    return [float(x[0, 0]) for x, _ in batches]


def test_limit_batches_per_phase() -> None:
    batches, recorder = Batches(), Recorder()
    learner = make_test_learner(batches, recorder, n_batches=6)
    learner.fit(2, limit_batches=(3, 2))
    data = firsts(learner.data[0])  # type: ignore[index]
    assert batches.seen == {"train": data[:3] * 2, "valid": data[:2] * 2}
    assert learner.cbstate.history[TrainingPhase()].steps == 6
    batches.seen.clear()
    learner.fit(1, limit_batches=4)
    assert batches.seen == {"train": data[:4], "valid": data[:4]}
    batches.seen.clear()
    learner.fit(1, limit_batches=(None, 1))
    assert batches.seen == {"train": data, "valid": data[:1]}


def test_a_step_schedule_spans_the_limited_run() -> None:
    scheduler = Scheduler(lr=linear(1.0, 0.0))
    learner = make_test_learner(scheduler, n_batches=8)
    learner.fit(2, limit_batches=2)
    assert learner.cbstate.hyperparams["lr/group0"] == 0.0  # the last of 4 steps (of 16: 0.8)
    assert len(limited(learner.data[0], 3)) == 3 and len(limited(learner.data[0], 30)) == 8  # type: ignore[index]
    assert not hasattr(limited(iter(learner.data[0]), 3), "__len__")  # type: ignore[index]


class LogFile(Callback):
    """A callback that writes a file, and says so."""

    writes_files: ClassVar[bool] = True

    def __init__(self, path: Path) -> None:
        self.path = path

    @on(FitBegin)
    def open(self, event: Event, phase: Phase, learner: Any) -> None:
        self.path.write_text("started\n")


def test_fast_dev_run_runs_one_batch_of_each_and_writes_nothing(tmp_path: Path) -> None:
    batches, log = Batches(), LogFile(tmp_path / "log.txt")
    checkpointer = Checkpointer(tmp_path / "checkpoints", every_steps=1)
    learner = make_test_learner(batches, checkpointer, log, Recorder(), Metrics(), n_batches=4)
    weight = learner.model.weight.detach().clone()
    result = learner.fit(5, fast_dev_run=True)
    data = firsts(learner.data[0])  # type: ignore[index]
    assert batches.seen == {"train": data[:1], "valid": data[:1]}
    assert list(tmp_path.iterdir()) == []  # no checkpoint, no log file
    assert result.history.keys() == {"train/loss", "valid/loss"} and len(result.history["train/loss"]) == 1
    assert not torch.equal(weight, learner.model.weight)  # it trains: one step
    assert learner.callbacks[1] is checkpointer and len(learner.callbacks) == 5  # all back afterwards
    learner.fit(1)
    assert (tmp_path / "log.txt").exists() and any((tmp_path / "checkpoints").iterdir())


def test_overfit_batches_trains_and_validates_on_the_first_batches_of_each() -> None:
    # Lightning's meaning: the first n training batches, and the first n validation batches.
    batches = Batches()
    train, valid = regression_batches(6, seed=3), regression_batches(6, seed=4)
    learner = make_test_learner(batches, Metrics(), n_batches=6)
    learner.fit(3, data=(train, valid), overfit_batches=2)
    assert batches.seen == {"train": firsts(train[:2]) * 3, "valid": firsts(valid[:2]) * 3}
    assert learner.cbstate.metrics.epochs["train/loss"][-1] < learner.cbstate.metrics.epochs["train/loss"][0]
    batches.seen.clear()
    learner.fit(2, data=(train, None), overfit_batches=2)  # no validation data: no validation
    assert batches.seen == {"train": firsts(train[:2]) * 2}


def test_a_shuffled_loader_overfits_its_first_batches_in_order(caplog: pytest.LogCaptureFixture) -> None:
    dataset = torch.utils.data.TensorDataset(torch.arange(32.0)[:, None], torch.zeros(32, 1))
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, shuffle=True)
    batches = Batches()
    learner = make_test_learner(batches, n_batches=2)
    with caplog.at_level("WARNING", logger="cadence.run_limits"):
        learner.fit(2, data=(loader, loader), overfit_batches=2)
    assert batches.seen == {"train": [0.0, 4.0, 0.0, 4.0], "valid": [0.0, 4.0, 0.0, 4.0]}  # in order, not shuffled
    assert caplog.messages[0].startswith("fit(overfit_batches=...): the training DataLoader shuffles; this fit takes its first batches in order")
    assert isinstance(loader.sampler, torch.utils.data.RandomSampler)  # the user's loader is left as it was
    generated = iter(regression_batches(4))  # a one-shot iterator: drawn from once
    batches.seen.clear()
    learner.fit(2, data=(generated, None), overfit_batches=2)
    assert batches.seen["train"][:2] == batches.seen["train"][2:] == firsts(regression_batches(4)[:2])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"limit_batches": 0}, r"fit\(limit_batches=0\): batch counts are ints >= 1 \(or None for all\), e\.g\. limit_batches=10"),
        ({"limit_batches": (1, 2, 3)}, r"one count for both phases or a pair \(train, valid\), e\.g\. limit_batches=\(100, 20\)"),
        ({"overfit_batches": 1.5}, r"fit\(overfit_batches=1\.5\): batch counts are ints >= 1"),
        ({"fast_dev_run": 1}, r"fit\(fast_dev_run=\.\.\.\) is True or False; got 1"),
        ({"fast_dev_run": True, "limit_batches": 2}, r"fit\(\) got limit_batches and fast_dev_run; use one at a time"),
        ({"overfit_batches": 2, "resume": "latest"}, r"fit\(overfit_batches=\.\.\., resume=\.\.\.\): a resumed run continues the whole run"),
    ],
)
def test_bad_quick_run_arguments_say_what_to_write(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises((TypeError, ValueError), match=message):
        make_test_learner().fit(1, **kwargs)


def test_overfitting_data_without_batches_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"overfit_batches=\.\.\.\): the training data yields no batches"):
        make_test_learner().fit(1, data=([], None), overfit_batches=2)
    with pytest.raises(ValueError, match=r"overfit_batches=\.\.\.\): the validation data yields no batches"):
        make_test_learner().fit(1, data=(regression_batches(2), iter([])), overfit_batches=2)
    recorder = Recorder()
    assert RunLimits.check().callbacks([recorder]) == [recorder]


def test_a_fast_dev_run_leaves_out_the_run_folder_loggers_and_plots(tmp_path: Path) -> None:
    from cadence import LearningCurves, LogMetrics, RunFolder
    from cadence.loggers import CSVLogger

    pytest.importorskip("matplotlib", reason="LearningCurves needs matplotlib: pip install 'cadence[plots]'")
    callbacks = [RunFolder("run", root=tmp_path / "runs"), LogMetrics(CSVLogger(tmp_path / "m.csv")), LearningCurves()]
    learner = make_test_learner(*callbacks, Recorder(), Metrics(), Checkpointer(), n_batches=2)
    learner.fit(2, fast_dev_run=True)
    assert list(tmp_path.iterdir()) == []
    assert all(cb.writes_files for cb in learner.callbacks if not isinstance(cb, (Recorder, Metrics)))


class UsesRun(Callback):
    """Reads the run folder RunFolder makes, and writes no file itself."""

    state_access = {"cbstate.run": READ}

    def __init__(self) -> None:
        self.folders: list[Any] = []

    @on(FitBegin)
    def record(self, event: Event, phase: Phase, learner: Any) -> None:
        self.folders.append(learner.cbstate.run)


def test_a_fast_dev_run_leaves_out_the_readers_of_what_only_a_left_out_callback_writes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from cadence import RunFolder

    uses_run = UsesRun()
    learner = make_test_learner(RunFolder("run", root=tmp_path / "runs"), uses_run, Recorder(), Metrics(), n_batches=2)
    with caplog.at_level("INFO", logger="cadence.run_limits"):
        learner.fit(2, fast_dev_run=True)  # no MissingStateError: UsesRun goes with RunFolder
    assert uses_run.folders == [] and list(tmp_path.iterdir()) == []
    assert caplog.messages == [
        "fast_dev_run: this fit runs without RunFolder (they write files) and without UsesRun "
        "(reads cbstate.run, which only RunFolder writes)."
    ]
    learner.fit(1)
    assert len(uses_run.folders) == 1  # both are back for the next fit
