"""A small training run for tests/checkpointing/test_resume.py, run in a subprocess so that it can be killed.

    python resume_script.py FOLDER OUT [--resume] [--kill-at STEP] [--kill-in-write MODE:N]

Trains an MLP with dropout on synthetic data: Adam, a cosine ``Scheduler`` of beta1,
``ReduceLROnPlateau``, ``EarlyStopping`` restoring the best weights, ``Metrics`` (with
torchmetrics' ``MeanAbsoluteError``) and ``Recorder``, a shuffled ``DataLoader`` drawing from
the global RNG, and a ``Checkpointer`` in FOLDER saving every 2 steps and every epoch and
keeping the best. Writes the final and the last trained weights, the loss and metric history
and the monitors' states to OUT (a ``torch.save`` file).

- ``--kill-at STEP``: SIGKILL this process after the backward pass of training step STEP
  (counted from 1 in this process), before the optimizer step.
- ``--kill-in-write MODE:N``: SIGKILL this process in the middle of its N-th checkpoint write:
  ``torn`` (half of the ``.pt`` temporary file written), ``rename`` (the ``.pt`` temporary file
  complete, not yet renamed) or ``commit`` (the ``.pt`` in place, the ``.json`` not yet).
- ``--resume``: ``fit(..., resume="latest")``.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import signal
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.regression import MeanAbsoluteError

from cadence import READ, Callback, Learner, Metrics, on
from cadence.callbacks.checkpointer import Checkpointer
from cadence.callbacks.early_stopping import EarlyStopping
from cadence.callbacks.plateau import ReduceLROnPlateau
from cadence.callbacks.scheduler import Scheduler
from cadence.checkpointing.files import latest_checkpoint, load_checkpoint
from cadence.events import BackwardEnd, BatchEnd, EpochEnd, Event
from cadence.phases import Phase, TrainingPhase, ValidationPhase
from cadence.schedules import cosine

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for helpers
from helpers import LossLog  # noqa: E402  (tests/, put on the path above)

N_EPOCHS = 4
BATCH_SIZE = 8
N_TRAIN = 48  # 6 batches per epoch, 24 steps in all


class KillAt(Callback):
    """SIGKILLs the process after the backward pass of its ``step``-th training batch."""

    def __init__(self, step: int) -> None:
        self.step, self.seen = step, 0

    @on(BackwardEnd, phase=TrainingPhase)
    def kill(self, event: Event, phase: Phase, learner: Any) -> None:
        self.seen += 1
        if self.seen == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class LastWeights(Callback):
    """The weights after the last validation, before EarlyStopping restores the best."""

    state_access = {"model": READ}

    @on(EpochEnd, phase=ValidationPhase)
    def keep(self, event: Event, phase: Phase, learner: Any) -> None:
        self.weights = {k: v.clone() for k, v in learner.model.state_dict().items()}


def kill_in_write(mode: str, n: int) -> None:
    """Patch the file operations a checkpoint write uses so that the N-th write dies midway."""
    writes = {"count": 0}
    save, replace = torch.save, os.replace

    def torn_save(obj: Any, stream: Any, *args: Any, **kwargs: Any) -> None:
        if not hasattr(stream, "sha256"):  # not a checkpoint write
            return save(obj, stream, *args, **kwargs)
        writes["count"] += 1
        if mode != "torn" or writes["count"] != n:
            return save(obj, stream, *args, **kwargs)
        buffer = io.BytesIO()
        save(obj, buffer)
        stream.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        stream.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    def dying_replace(source: Any, target: Any) -> None:
        last = writes["count"] == n
        if last and mode == "rename" and str(target).endswith(".pt"):
            os.kill(os.getpid(), signal.SIGKILL)
        if last and mode == "commit" and str(target).endswith(".json"):
            os.kill(os.getpid(), signal.SIGKILL)
        replace(source, target)

    torch.save = torn_save  # type: ignore[assignment]
    os.replace = dying_replace  # type: ignore[assignment]


def build(folder: str, kill_at: int | None, resume: bool) -> Learner:
    torch.manual_seed(0)
    data = torch.Generator().manual_seed(1)
    x = torch.randn(N_TRAIN, 4, generator=data)
    y = x.sum(1, keepdim=True) + 0.1 * torch.randn(N_TRAIN, 1, generator=data)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(16, 1)
    )
    train = DataLoader(TensorDataset(x, y), batch_size=BATCH_SIZE, shuffle=True)
    valid = DataLoader(TensorDataset(x[:16], y[:16]), batch_size=BATCH_SIZE)
    callbacks: list[Callback] = [
        LossLog(),
        LastWeights(),
        Scheduler(beta1=cosine(0.9, 0.8)),  # the learning rate is ReduceLROnPlateau's
        ReduceLROnPlateau(patience=0, factor=0.5, threshold=0.5, cooldown=1),
        EarlyStopping(patience=10, restore_best_weights=True),
        Metrics(MeanAbsoluteError()),
        Checkpointer(folder, every_steps=2, every_epochs=1, keep_last=2, keep_best=1),
    ]
    if kill_at is not None:
        callbacks.append(KillAt(kill_at))
    # A resumed run must not depend on the global RNGs it starts with.
    seed = 12345 if resume else 0
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    return Learner(
        model, torch.nn.functional.mse_loss, torch.optim.Adam(model.parameters(), lr=0.05), data=(train, valid), callbacks=callbacks
    )


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder")
    parser.add_argument("out")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--kill-at", type=int)
    parser.add_argument("--kill-in-write")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.kill_in_write:
        mode, n = args.kill_in_write.split(":")
        kill_in_write(mode, int(n))
    learner = build(args.folder, args.kill_at, args.resume)
    resumed_from = None
    if args.resume:
        latest = latest_checkpoint(args.folder)
        resumed_from = None if latest is None else latest.meta["position"]
    result = learner.fit(N_EPOCHS, resume="latest" if args.resume else None)
    log, last = learner.get_callback(LossLog), learner.get_callback(LastWeights)
    stopping, plateau = learner.get_callback(EarlyStopping), learner.get_callback(ReduceLROnPlateau)
    checkpointer = learner.get_callback(Checkpointer)
    assert isinstance(log, LossLog) and isinstance(last, LastWeights) and isinstance(checkpointer, Checkpointer)
    assert stopping is not None and plateau is not None and checkpointer.best_path is not None
    torch.save(
        {
            "weights": learner.model.state_dict(),
            "last_weights": last.weights,
            "stopping": stopping.state_dict(),
            "plateau": plateau.state_dict(),
            "lr": learner.optimizer.param_groups[0]["lr"],
            "best_checkpoint": load_checkpoint(checkpointer.best_path).meta["position"],
            "losses": log.losses,
            "epochs": {k: list(v) for k, v in learner.cbstate.metrics.epochs.items()},
            "reason": result.reason,
            "resumed_from": resumed_from,
        },
        args.out,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
