"""cadence demo: a digits classifier trained on the CPU in a few seconds.

The data is scikit-learn's bundled 8x8 digits (no download). The run uses the default callbacks
(progress bar, metrics table, NaN guard), accuracy from torchmetrics on validation, a one-cycle
learning-rate schedule, early stopping, and a walkthrough-style Printer of our own, which shows
the two things a cadence callback declares: when it runs and what it reads.

    make demo            # or: .venv/bin/python examples/demo.py
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassAccuracy

from cadence import READ, Callback, EarlyStopping, Learner, Metrics, MetricSpec, Scheduler, on
from cadence.events import EpochEnd, Event
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


def main() -> int:
    torch.manual_seed(0)
    train, valid = digits()
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Dropout(0.1), torch.nn.Linear(128, 10)
    )
    learner = Learner(
        model,
        torch.nn.functional.cross_entropy,
        torch.optim.AdamW(model.parameters(), weight_decay=1e-4),
        data=(train, valid),
        callbacks=[
            Printer(),  # listed first on purpose: the graph still runs it after what it reads
            EarlyStopping("valid/loss", patience=3),
            Metrics(MetricSpec(MulticlassAccuracy(num_classes=10), phases=["valid"])),
            Scheduler(lr=one_cycle(0.01)),
        ],
    )
    print("How cadence ordered the callbacks at the end of a validation epoch:\n")
    print(learner.explain(EpochEnd, ValidationPhase), "\n")
    stopped = learner.fit(12)
    if stopped is not None:
        print(f"Stopped early: {stopped.reason}")
    accuracy = learner.cbstate.metrics.last("valid/accuracy")
    print(f"\nFinal validation accuracy: {accuracy:.2%}")
    if accuracy <= 0.90:
        print("The demo should reach more than 90% validation accuracy.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
