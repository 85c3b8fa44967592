"""LogMetrics: the metrics of ``cbstate.metrics`` to logger backends, on one step axis."""

from __future__ import annotations

from typing import Any

from cadence import READ, on
from cadence.events import BatchEnd, Event, FitBegin
from cadence.loggers.backend import Backend
from cadence.loggers.logger import LoggerCallback, check_every
from cadence.loggers.values import Scalar
from cadence.phases import Phase, TrainingPhase

__all__ = ["LogMetrics"]


class LogMetrics(LoggerCallback):
    """Writes what ``Metrics`` computes to ``backends``: each epoch's values (always) as
    ``<name>`` under their phase, and the training step values every ``every`` steps as
    ``<name>_step``. The step is the training step for every phase: a validation epoch's
    values are logged at the training step it follows, so train and valid curves line up.

    Step values are read (``float()``, a sync on an accelerator) on logging steps only. An
    epoch's values are the ones ``Metrics`` added in that epoch, counted from what its history
    held when the fit began (or at the checkpoint a resumed fit continues from), so a second
    fit, a second learner, or a ``Metrics`` that starts its history afresh log every epoch.

    Args:
        *backends: ``TensorBoardLogger()``, ``MLflowLogger()``, ``CSVLogger()``, ...
        every: Log the step values every this many training steps.

    Example:
        >>> import csv, tempfile
        >>> from pathlib import Path
        >>> from cadence.loggers import CSVLogger
        >>> from cadence.testing import make_test_learner
        >>> path = tempfile.mkdtemp() + "/metrics.csv"
        >>> from cadence import Metrics, Recorder
        >>> _ = make_test_learner(LogMetrics(CSVLogger(path), every=4), Recorder(), Metrics(), n_batches=4).fit(1)
        >>> [row[:4] for row in csv.reader(Path(path).read_text().splitlines())]
        [['step', 'epoch', 'phase', 'name'], ['4', '1', 'train', 'loss_step'], ['4', '1', 'train', 'loss'], ['4', '1', 'valid', 'loss']]
    """

    state_access = {"cbstate.metrics": READ, "cbstate.history": READ}

    def __init__(self, *backends: Backend, every: int = 10) -> None:
        super().__init__(backends)
        self.every = check_every("LogMetrics", every, 50)
        self._written: dict[str, int] = {}  # key -> how many of its epoch values are logged

    def began(self, event: FitBegin, learner: Any) -> None:
        # What the history holds now was logged by an earlier fit (or never will be): a
        # resumed fit's load_state_dict, after FitBegin, replaces this with the checkpoint's.
        self._written = {k: len(v) for k, v in learner.cbstate.metrics.epochs.items()}

    @on(BatchEnd, phase=TrainingPhase)
    def batch_end(self, event: Event, phase: Phase, learner: Any) -> None:
        if learner.cbstate.history[phase].steps % self.every or not self._active:
            return
        prefix = phase.name + "/"
        step = learner.cbstate.metrics.step
        values = [Scalar(k[len(prefix) :] + "_step", float(v)) for k, v in step.items() if k.startswith(prefix)]
        self.log(values, learner, phase, in_batch=True)

    def epoch_ended(self, phase: Phase, learner: Any) -> None:
        prefix = phase.name + "/"
        values = []
        for key, history in learner.cbstate.metrics.epochs.items():
            if not key.startswith(prefix):
                continue
            written = self._written.get(key, 0)
            if len(history) < written:  # the history started afresh
                written = 0
            if len(history) > written:
                values.append(Scalar(key[len(prefix) :], history[-1]))
            self._written[key] = len(history)
        self.log(values, learner, phase)

    def reset(self) -> None:
        """Reused in another learner: fresh logs (``LoggerCallback.reset``), nothing written.
        A second fit of the same learner appends to the logs, on its step axis."""
        super().reset()
        self._written = {}

    def state_dict(self) -> dict[str, Any]:
        """The backends' positions and how many epoch values of each key are logged."""
        return {**super().state_dict(), "written": dict(self._written)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._written = {str(k): int(v) for k, v in state.get("written", {}).items()}
