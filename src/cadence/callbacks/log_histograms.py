"""LogHistograms: histograms of the model's weights and gradients every N training steps."""

from __future__ import annotations

from typing import Any

from cadence import READ, on
from cadence.events import BatchEnd, Event
from cadence.loggers.backend import Backend
from cadence.loggers.logger import LoggerCallback, check_every
from cadence.loggers.values import Histogram
from cadence.phases import Phase, TrainingPhase

__all__ = ["LogHistograms"]


class LogHistograms(LoggerCallback):
    """Every ``every`` training steps, writes a histogram of each parameter
    (``weights/<name>``) and of its gradient (``gradients/<name>``, from the step just taken)
    as values of the whole run. Parameters are copied to the CPU on those steps only.

    Args:
        *backends: The backends to write to (TensorBoard shows histograms; MLflow and CSV
            skip them).
        every: Log every this many training steps.
        bins: Buckets per histogram.

    Example:
        >>> import tempfile
        >>> from cadence.loggers import TensorBoardLogger
        >>> from cadence.testing import make_test_learner
        >>> from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        >>> folder = tempfile.mkdtemp()
        >>> from cadence import Recorder
        >>> _ = make_test_learner(LogHistograms(TensorBoardLogger(folder), every=2), Recorder(), n_batches=4).fit(1)
        >>> events = EventAccumulator(folder, size_guidance={"histograms": 0}).Reload()
        >>> sorted(events.Tags()["histograms"])
        ['gradients/weight', 'weights/weight']
        >>> [e.step for e in events.Histograms("weights/weight")]
        [2, 4]
    """

    state_access = {"model": READ, "cbstate.history": READ}

    def __init__(self, *backends: Backend, every: int = 100, bins: int = 30) -> None:
        super().__init__(backends)
        self.every = check_every("LogHistograms", every, 100)
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
            raise ValueError(f"LogHistograms(bins=...) expects an int >= 1, e.g. bins=30; got {bins!r}.")
        self.bins = bins

    @on(BatchEnd, phase=TrainingPhase)
    def batch_end(self, event: Event, phase: Phase, learner: Any) -> None:
        if learner.cbstate.history[phase].steps % self.every or not self._active:
            return
        values = []
        for name, parameter in learner.model.named_parameters():
            values.append(Histogram(f"weights/{name}", parameter.detach().float().cpu().numpy(), self.bins))
            if parameter.grad is not None:
                values.append(Histogram(f"gradients/{name}", parameter.grad.detach().float().cpu().numpy(), self.bins))
        self.log(values, learner, None, in_batch=True)
