"""LogHyperparams: the optimizer's hyperparameters, per training step, as they were used."""

from __future__ import annotations

import numbers
from typing import Any

import torch

from cadence import READ, on
from cadence.events import BatchEnd, Event
from cadence.loggers.backend import Backend
from cadence.loggers.logger import LoggerCallback, check_every
from cadence.loggers.values import Scalar
from cadence.phases import Phase, TrainingPhase

__all__ = ["LogHyperparams"]

_NAMES = ("lr", "momentum", "weight_decay")


class LogHyperparams(LoggerCallback):
    """Writes the optimizer's hyperparameters every ``every`` training steps, for the
    training phase: ``lr/group0``, ``momentum/group0``, ``weight_decay/group0``,
    ``beta1/group0``, ``beta2/group0`` (those each param group has). Where a ``Scheduler``
    runs, its values come from ``cbstate.hyperparams``: what the step used (a torch
    ``LRScheduler`` has already moved the optimizer's ``lr`` on by ``BatchEnd``).

    Args:
        *backends: The backends to write to.
        every: Log every this many training steps.

    Example:
        >>> import csv, tempfile
        >>> from pathlib import Path
        >>> from cadence import Recorder, Scheduler
        >>> from cadence.loggers import CSVLogger
        >>> from cadence.schedules import linear
        >>> from cadence.testing import make_test_learner
        >>> path = tempfile.mkdtemp() + "/lr.csv"
        >>> learner = make_test_learner(
        ...     LogHyperparams(CSVLogger(path)), Scheduler(lr=linear(0.1, 0.0)), Recorder(), n_batches=2
        ... )
        >>> _ = learner.fit(1)
        >>> [(row[0], row[3], row[4]) for row in csv.reader(Path(path).read_text().splitlines()) if row[3] == "lr/group0"]
        [('1', 'lr/group0', '0.1'), ('2', 'lr/group0', '0.0')]
    """

    state_access = {"optimizer": READ, "cbstate": READ}

    def __init__(self, *backends: Backend, every: int = 1) -> None:
        super().__init__(backends)
        self.every = check_every("LogHyperparams", every, 10)

    @on(BatchEnd, phase=TrainingPhase)
    def batch_end(self, event: Event, phase: Phase, learner: Any) -> None:
        if learner.cbstate.history[phase].steps % self.every or not self._active:
            return
        values: dict[str, float] = {}
        for i, group in enumerate(learner.optimizer.param_groups):
            for name in _NAMES:
                if _number(group.get(name)):
                    values[f"{name}/group{i}"] = float(group[name])
            betas = group.get("betas")
            if isinstance(betas, (tuple, list)) and len(betas) == 2:
                values[f"beta1/group{i}"], values[f"beta2/group{i}"] = float(betas[0]), float(betas[1])
        cbstate = learner.cbstate
        if "hyperparams" in cbstate:
            values.update((k, float(v)) for k, v in cbstate.hyperparams.items())
        self.log([Scalar(k, v) for k, v in values.items()], learner, phase, in_batch=True)


def _number(value: object) -> bool:
    return isinstance(value, torch.Tensor) or (isinstance(value, numbers.Real) and not isinstance(value, bool))
