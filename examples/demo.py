"""cadence demo: a digits classifier trained on the CPU in a few seconds.

The data is scikit-learn's bundled 8x8 digits (no download). The run uses the default callbacks
(progress bar, metrics table, NaN guard), accuracy from torchmetrics on validation, a one-cycle
learning-rate schedule, early stopping, and a walkthrough-style Printer of our own, which shows
the two things a cadence callback declares: when it runs and what it reads.

Everything the run produces goes into its run folder, runs/<date>-<n>/: TensorBoard event
files, an MLflow store, a CSV of every value, learning-curve plots, checkpoints, and the
callback graph as a picture. The end of the output says how to open each.

    make demo            # or: .venv/bin/python examples/demo.py
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassAccuracy

from cadence import (
    READ,
    Callback,
    Checkpointer,
    EarlyStopping,
    LearningCurves,
    Learner,
    LogConfig,
    LogHistograms,
    LogHyperparams,
    LogMetrics,
    Metrics,
    MetricSpec,
    RunFolder,
    Scheduler,
    on,
)
from cadence.events import EpochEnd, Event
from cadence.graph.render import dot, mermaid, svg
from cadence.loggers import CSVLogger, MLflowLogger, TensorBoardLogger
from cadence.phases import Phase, ValidationPhase
from cadence.schedules import one_cycle


class Printer(Callback):
    """After each validation epoch, one line with the epoch's training and validation results.

    It reads the metrics and the history, so cadence runs it after Metrics and Recorder (the
    callbacks that write them) whatever the list order, and refuses to build without them.
    """

    state_access = {"cbstate.metrics": READ, "cbstate.history": READ}

    @on(EpochEnd, phase=ValidationPhase)
    def print_epoch(self, event: Event, phase: Phase, learner: Any) -> None:
        metrics = learner.cbstate.metrics
        epoch = learner.cbstate.history[phase].epochs
        print(
            f"Printer: epoch {epoch}: train loss {metrics.last('train/loss'):.4f}, "
            f"valid loss {metrics.last('valid/loss'):.4f}, "
            f"valid accuracy {metrics.last('valid/accuracy'):.2%}"
        )


def digits(batch_size: int = 32) -> tuple[DataLoader[Any], DataLoader[Any]]:
    x, y = load_digits(return_X_y=True)
    inputs = torch.tensor(x, dtype=torch.float32) / 16.0
    targets = torch.tensor(y, dtype=torch.long)
    order = torch.randperm(len(targets), generator=torch.Generator().manual_seed(0))
    split = int(0.8 * len(order))
    train, valid = order[:split], order[split:]
    shuffle = torch.Generator().manual_seed(1)
    return (
        DataLoader(TensorDataset(inputs[train], targets[train]), batch_size, shuffle=True, generator=shuffle),
        DataLoader(TensorDataset(inputs[valid], targets[valid]), 256),
    )


def make_learner() -> Learner:
    """The demo's learner; also what `python -m cadence explain examples/demo.py:make_learner` shows."""
    torch.manual_seed(0)
    train, valid = digits()
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Dropout(0.1), torch.nn.Linear(128, 10)
    )
    # One of each backend, shared by the loggers; each writes into the run folder.
    backends = (TensorBoardLogger(), MLflowLogger(), CSVLogger())
    return Learner(
        model,
        torch.nn.functional.cross_entropy,
        torch.optim.AdamW(model.parameters(), weight_decay=1e-4),
        data=(train, valid),
        callbacks=[
            Printer(),  # listed first on purpose: the graph still runs it after what it reads
            LogMetrics(*backends, every=10),  # loggers too: they run after what they log
            LogHyperparams(*backends, every=10),
            LogHistograms(backends[0], every=50),
            LogConfig(*backends, hparams={"batch_size": 32, "dropout": 0.1}),
            RunFolder(),
            LearningCurves(),
            Checkpointer(every_epochs=4),
            EarlyStopping("valid/loss", patience=3),
            Metrics(MetricSpec(MulticlassAccuracy(num_classes=10), phases=["valid"])),
            Scheduler(lr=one_cycle(0.01)),
        ],
    )


def main() -> int:
    learner = make_learner()
    print("How cadence ordered the callbacks at the end of a validation epoch:\n")
    print(learner.explain(EpochEnd, ValidationPhase), "\n")
    result = learner.fit(12)
    if result.reason is not None:
        print(f"Stopped early: {result.reason}")
    accuracy = learner.cbstate.metrics.last("valid/accuracy")
    print(f"\nFinal validation accuracy: {accuracy:.2%}")
    show_outputs(learner, learner.cbstate.run.path)
    if accuracy <= 0.90:
        print("The demo should reach more than 90% validation accuracy.", file=sys.stderr)
        return 1
    return 0


def show_outputs(learner: Learner, run: Path) -> None:
    """Write the callback graph as a picture, and say where everything is and how to open it."""
    plans = learner.plans()
    (run / "callback-graph.mmd").write_text(mermaid(plans) + "\n")
    (run / "callback-graph.dot").write_text(dot(plans) + "\n")
    picture = "callback-graph.mmd (paste it into any Mermaid viewer) or callback-graph.dot"
    if shutil.which("dot"):
        (run / "callback-graph.svg").write_bytes(svg(plans))
        picture = "callback-graph.svg (open it in a browser)"
    venv = Path(sys.executable).parent
    print(f"\nEverything this run wrote is in {run}/:")
    print(f"  TensorBoard  {run}/tensorboard/\n      {venv}/tensorboard --logdir {run.parent}   (then open http://localhost:6006)")
    print(
        f"  MLflow       {run}/mlflow.db\n      mlflow ui --backend-store-uri sqlite:///{run.resolve()}/mlflow.db"
        f"   (the UI needs the full package: pip install mlflow)"
    )
    print(f"  CSV          {run}/metrics.csv\n      column -s, -t < {run}/metrics.csv | less")
    plots = ", ".join(sorted(p.name for p in (run / "plots").glob("*.png")))
    print(f"  Plots        {run}/plots/ ({plots})")
    print(f"  Checkpoints  {run}/checkpoints/")
    print(f"  Graph        {run}/{picture}")
    print(f"      {venv}/python -m cadence explain examples/demo.py:make_learner   (the plans, and the picture again)")


if __name__ == "__main__":
    raise SystemExit(main())
