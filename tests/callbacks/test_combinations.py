"""The built-in callbacks combine: every combination of those that may be used together builds,
and ReduceLROnPlateau + MixedPrecision + Metrics (a cycle once) trains in every list order.

Only callbacks that write state can take part in a cycle or a write conflict (a callback that
only reads has no edge out), so the writers are combined exhaustively, one option per slot, each
option standing for those with the same declarations and answers (MixedPrecision's two dtypes;
a Scheduler of any hyperparameter but lr beside ReduceLROnPlateau, of any one alone); the
readers (loggers, printers, Checkpointer, ...) join the combinations with every writer slot
filled.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from rich.console import Console

from cadence import (
    Callback,
    Checkpointer,
    EarlyStopping,
    GradientAccumulation,
    GradientClipping,
    LogConfig,
    LogHistograms,
    LogHyperparams,
    LogMetrics,
    Metrics,
    MetricsPrinter,
    MixedPrecision,
    ProgressPrinter,
    Recorder,
    ReduceLROnPlateau,
    RunFolder,
    SanityCheck,
    Scheduler,
    StopOnNaNLoss,
    ToDevice,
    throttle,
)
from cadence.events import EpochEnd
from cadence.loggers.csv import CSVLogger
from cadence.schedules import cosine
from cadence.testing import make_test_learner

Make = Callable[[], Callback]

# One option per slot; () leaves the slot empty. ReduceLROnPlateau with a Scheduler of lr is
# refused on purpose (test_plateau.py), as are two MixedPrecision or two EarlyStopping restoring.
SLOTS: dict[str, list[tuple[Make, ...]]] = {
    "rate": [
        (),
        (lambda: Scheduler(momentum=cosine(0.9, 0.8)),),
        (ReduceLROnPlateau,),
        (ReduceLROnPlateau, lambda: Scheduler(momentum=cosine(0.9, 0.8))),
    ],
    "stopping": [(), (EarlyStopping,), (lambda: EarlyStopping(restore_best_weights=True),)],
    "precision": [(), (lambda: MixedPrecision(torch.float16),)],
    "accumulation": [(), (lambda: GradientAccumulation(2),)],
    "clipping": [(), (lambda: GradientClipping(1.0),)],
    "device": [(), (lambda: ToDevice("cpu"),)],
}
WRITERS = list(itertools.product(*SLOTS.values()))


def quiet() -> Console:
    return Console(file=io.StringIO())


def readers(folder: Path) -> list[Callback]:
    """Every built-in that only reads, with what it needs beside it (RunFolder)."""
    return [
        Checkpointer(folder / "checkpoints", keep_best=1),
        RunFolder(root=folder / "runs", console=quiet()),
        LogMetrics(CSVLogger(folder / "metrics")),
        LogHyperparams(CSVLogger(folder / "hyperparams")),
        LogHistograms(CSVLogger(folder / "histograms")),
        LogConfig(CSVLogger(folder / "config")),
        ProgressPrinter(console=quiet()),
        MetricsPrinter(console=quiet()),
        StopOnNaNLoss(),
        SanityCheck(),
        throttle(LogMetrics(CSVLogger(folder / "throttled")), EpochEnd, every=2),
    ]


def build(writers: tuple[tuple[Make, ...], ...], *others: Callback) -> None:
    callbacks = [make() for slot in writers for make in slot]
    make_test_learner(*callbacks, Metrics(), Recorder(), *others)


def test_every_combination_of_the_writers_builds() -> None:
    assert len(WRITERS) == 192
    for writers in WRITERS:
        build(writers)  # a CycleError or ConflictError names the combination in its message


@pytest.mark.parametrize("rate", range(len(SLOTS["rate"])))
def test_with_every_writer_slot_filled_the_readers_join(rate: int, tmp_path: Path) -> None:
    for stopping in SLOTS["stopping"]:
        writers = (SLOTS["rate"][rate], stopping, *(options[-1] for options in list(SLOTS.values())[2:]))
        build(writers, *readers(tmp_path))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_plateau_mixed_precision_and_metrics_train_in_every_list_order(dtype: torch.dtype) -> None:
    # ReduceLROnPlateau writes the optimizer, MixedPrecision reads it and writes batch.loss,
    # Metrics reads batch.loss and writes cbstate.metrics: a cycle while all three handled EpochEnd.
    runs = set()
    for order in itertools.permutations(range(3)):
        # mode="max" on a falling loss: no epoch improves, so the rate halves after each but the first.
        made = [ReduceLROnPlateau(mode="max", patience=0, factor=0.5), MixedPrecision(dtype), Metrics()]
        learner = make_test_learner(*(made[i] for i in order), lr=1.0, n_batches=1)
        learner.fit(3)
        runs.add((learner.optimizer.param_groups[0]["lr"], tuple(learner.cbstate.metrics.epochs["valid/loss"])))
    assert len(runs) == 1  # the same run in every order
    assert next(iter(runs))[0] == 0.25

@pytest.mark.parametrize("restore", [False, True])
def test_early_stopping_mixed_precision_and_metrics_build_in_every_list_order(restore: bool) -> None:
    for dtype, order in itertools.product((torch.float16, torch.bfloat16), itertools.permutations(range(3))):
        made = [EarlyStopping(restore_best_weights=restore), MixedPrecision(dtype), Metrics()]
        make_test_learner(*(made[i] for i in order))
