"""The logger callbacks in the graph: READ only, so they run after what they log in any list
order; values read on logging steps only; their argument checks."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest

from cadence import (
    Checkpointer,
    LearningCurves,
    LogConfig,
    LogHistograms,
    LogHyperparams,
    LogMetrics,
    Metrics,
    Recorder,
    RunFolder,
    Scheduler,
)
from cadence.events import BatchEnd, EpochEnd
from cadence.loggers import CSVLogger, Run
from cadence.phases import TrainingPhase, ValidationPhase
from cadence.schedules import linear
from cadence.testing import make_test_learner


def rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.read_text().splitlines()))


@pytest.mark.parametrize("loggers_first", [True, False])
def test_loggers_run_after_what_they_log_in_either_list_order(tmp_path: Path, loggers_first: bool) -> None:
    path = tmp_path / "log.csv"
    logger = CSVLogger(path)
    loggers = [LogMetrics(logger, every=1), LogHyperparams(logger)]
    others = [Scheduler(lr=linear(0.1, 0.0)), Metrics(), Recorder()]
    learner = make_test_learner(*(loggers + others if loggers_first else others + loggers), n_batches=4)
    order = learner.explain(BatchEnd, TrainingPhase).splitlines()
    numbered = [line.split(". ", 1)[1] for line in order if ". " in line and line.strip()[0].isdigit()]
    assert numbered.index("LogMetrics.batch_end") > numbered.index("Metrics.batch_end")
    assert numbered.index("LogHyperparams.batch_end") > numbered.index("Scheduler.batch_end")
    epoch_end = learner.explain(EpochEnd, ValidationPhase)
    assert "after Metrics: Metrics writes cbstate.metrics, LogMetrics reads cbstate.metrics" in epoch_end
    learner.fit(1)
    lr = [(r["step"], float(r["value"])) for r in rows(path) if r["name"] == "lr/group0"]
    assert lr == [("1", 0.1), ("2", pytest.approx(0.1 * 2 / 3)), ("3", pytest.approx(0.1 / 3)), ("4", 0.0)]
    losses = [float(r["value"]) for r in rows(path) if r["name"] == "loss" and r["phase"] == "valid"]
    assert losses == learner.cbstate.metrics.epochs["valid/loss"]


class CountingStep(dict):  # type: ignore[type-arg]
    """cbstate.metrics.step, counting how often a logger reads its values."""

    reads = 0

    def items(self) -> Any:
        CountingStep.reads += 1
        return super().items()


def test_step_values_are_read_on_logging_steps_only(tmp_path: Path) -> None:
    learner = make_test_learner(LogMetrics(CSVLogger(tmp_path / "m.csv"), every=5), Metrics(), Recorder(), n_batches=20)
    learner.cbstate.metrics.step = CountingStep()
    CountingStep.reads = 0
    learner.fit(1)
    assert CountingStep.reads == 4  # steps 5, 10, 15, 20 of 20


def test_histograms_and_config_arguments_are_checked() -> None:
    logger = CSVLogger("x.csv")
    with pytest.raises(ValueError, match=r"LogHistograms\(bins=...\) expects an int >= 1"):
        LogHistograms(logger, bins=0)
    with pytest.raises(TypeError, match=r"LogConfig\(hparams=...\) takes names \(str\) -> bool, int, float or str; got 'layers': list"):
        LogConfig(logger, hparams={"layers": [1, 2]})


def test_the_run_folder_is_shared_by_loggers_checkpoints_and_plots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    learner = make_test_learner(
        RunFolder("shared", root=tmp_path),
        LogMetrics(CSVLogger(), every=4),
        Checkpointer(every_epochs=1),
        LearningCurves(),
        Metrics(),
        Recorder(),
        n_batches=4,
    )
    learner.fit(2)
    run = tmp_path / "shared"
    assert capsys.readouterr().out.startswith(f"Run folder: {run}")
    assert (run / "metrics.csv").is_file() and (run / "plots" / "loss.png").is_file()
    assert sorted(p.name for p in (run / "checkpoints").glob("*.pt")) == [
        "checkpoint-000001-epoch1-batch0.pt", "checkpoint-000002-epoch2-batch0.pt"
    ]


def test_a_checkpointer_or_plots_without_a_folder_need_a_run_folder() -> None:
    from cadence import MissingStateError
    from cadence.graph.check import find_errors

    with pytest.raises(MissingStateError, match=r"Checkpointer reads cbstate\.run, but no callback writes it\.\nAdd RunFolder\(\), which writes cbstate\.run\."):
        make_test_learner(Checkpointer(), Recorder())
    with pytest.raises(MissingStateError, match=r"LearningCurves reads cbstate\.run, but no callback writes it\.\nAdd RunFolder\(\)"):
        make_test_learner(LearningCurves(), Metrics(), Recorder())
    found = [str(e).splitlines()[0] for e in find_errors([Checkpointer(), LearningCurves(), LogMetrics(CSVLogger()), Metrics(), Recorder()])]
    assert found == [f"{name} reads cbstate.run, but no callback writes it." for name in ("Checkpointer", "LearningCurves", "LogMetrics")]
    assert str(Checkpointer().folder) == "<run folder>/checkpoints"
    make_test_learner(Checkpointer("checkpoints"), LearningCurves("plots"), Metrics(), Recorder())  # a folder of their own needs none


def test_default_run_names_count_up_per_day(tmp_path: Path) -> None:
    first, second = Run(root=tmp_path).name, Run(root=tmp_path).name
    assert first.endswith("-1") and second.endswith("-2") and first[:10] == second[:10]
    for bad in ("", "a/b", ".."):
        with pytest.raises(ValueError, match=r'Run\(name=.*\): use one folder name such as "digits"'):
            Run(bad)


def test_learning_curves_plot_each_metric_and_the_lr(tmp_path: Path) -> None:
    from matplotlib.image import imread

    curves = LearningCurves(tmp_path)
    learner = make_test_learner(curves, Metrics(), Recorder(), Scheduler(lr=linear(0.1, 0.01)), n_batches=4)
    learner.fit(2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loss.png", "lr.png"]
    assert imread(tmp_path / "loss.png").shape[:2] == (400, 600)
    assert curves.state_dict()["steps"] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert [p.name for p in curves.save()] == ["loss.png", "lr.png"]
