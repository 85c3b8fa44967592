"""A logged training run for tests/loggers/test_resume.py, run in a subprocess so that it can be killed.

    python resume_script.py ROOT [--resume] [--kill-at STEP]

Trains a small MLP on synthetic data with a shuffled DataLoader, a cosine ``Scheduler``, and
``RunFolder("run", root=ROOT)``; ``LogMetrics`` and ``LogHyperparams`` write every step to
TensorBoard, MLflow and CSV in the run folder; a ``Checkpointer()`` in the run folder saves
every 3 steps (6 batches an epoch, so one checkpoint falls on an epoch's last batch, before
its epoch values are logged).

- ``--kill-at STEP``: SIGKILL this process after the backward pass of training step STEP.
- ``--resume``: ``fit(..., resume="latest")``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from cadence import Callback, Checkpointer, Learner, LogHyperparams, LogMetrics, RunFolder, Scheduler
from cadence.loggers import CSVLogger, MLflowLogger, TensorBoardLogger
from cadence.schedules import cosine

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/
from checkpointing.resume_script import KillAt  # noqa: E402  (tests/, put on the path above)

N_EPOCHS = 3


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--kill-at", type=int)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = torch.Generator().manual_seed(1)
    x = torch.randn(48, 4, generator=data)
    y = x.sum(1, keepdim=True)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    train = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)
    valid = DataLoader(TensorDataset(x[:16], y[:16]), batch_size=8)
    backends = (TensorBoardLogger(), MLflowLogger(), CSVLogger())
    callbacks: list[Callback] = [
        LogMetrics(*backends, every=1),
        LogHyperparams(*backends),
        RunFolder("run", root=args.root),
        Scheduler(lr=cosine(0.05, 0.001)),
        Checkpointer(every_steps=3, every_epochs=None, keep_last=2),
    ]
    if args.kill_at is not None:
        callbacks.append(KillAt(args.kill_at))
    torch.manual_seed(12345 if args.resume else 0)
    learner = Learner(model, torch.nn.functional.mse_loss, torch.optim.Adam(model.parameters()), data=(train, valid), callbacks=callbacks)
    learner.fit(N_EPOCHS, resume="latest" if args.resume else None)


if __name__ == "__main__":
    main(sys.argv[1:])
