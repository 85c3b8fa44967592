"""LearningCurves: PNG plots of every metric, train against valid, and of the learning rate."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cadence import READ, Callback, on
from cadence.events import BatchEnd, EpochEnd, Event, FitEnd
from cadence.loggers.backend import require
from cadence.loggers.plots import plot_curve, plot_learning_curves
from cadence.phases import Phase, TrainingPhase, ValidationPhase

__all__ = ["LearningCurves"]


class LearningCurves(Callback):
    """Saves a PNG per metric (its epoch values, one line per phase) after every epoch, and
    ``lr.png`` (the learning rate per training step, each param group a line) when a
    ``Scheduler`` runs. Call ``save()`` for the plots on demand.

    Args:
        folder: Where the PNGs go; None for ``plots`` in the run folder (add ``RunFolder()``).
        every_epoch: Plot after every epoch; False plots only at ``FitEnd`` (and on ``save()``).

    Needs matplotlib: ``pip install 'cadence[plots]'``. The learning rate is recorded from
    ``cbstate.hyperparams`` per step (a float each; no plot is drawn per step).

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from cadence import Metrics, Recorder, Scheduler
        >>> from cadence.schedules import cosine
        >>> from cadence.testing import make_test_learner
        >>> folder = tempfile.mkdtemp()
        >>> learner = make_test_learner(
        ...     LearningCurves(folder), Metrics(), Recorder(), Scheduler(lr=cosine(0.1, 0.01)), n_batches=4
        ... )
        >>> _ = learner.fit(2)
        >>> sorted(p.name for p in Path(folder).iterdir())
        ['loss.png', 'lr.png']
    """

    state_access = {"cbstate.metrics": READ, "cbstate": READ}
    writes_files = True  # fit(fast_dev_run=True) runs without it
    placement = "rank_zero"  # in a distributed fit, rank 0 alone draws (the epoch values are every rank's)

    def __init__(self, folder: str | os.PathLike[str] | None = None, *, every_epoch: bool = True) -> None:
        require("LearningCurves", "plots", "matplotlib")
        if folder is not None and not isinstance(folder, (str, os.PathLike)):
            raise TypeError(f'LearningCurves(folder=...) expects a path such as "plots"; got {type(folder).__name__}.')
        self.folder = None if folder is None else Path(folder)
        self.every_epoch = every_epoch
        self._steps: list[int] = []
        self._lr: dict[str, list[float]] = {}
        self._epochs: dict[str, list[float]] = {}
        self._place: Path | None = self.folder
        self._validates = False

    def init(self, learner: Any) -> None:
        if self.folder is None and "run" not in learner.cbstate:
            raise ValueError(
                "LearningCurves() without a folder saves into the run folder, but this learner has "
                "none. Add RunFolder() to the callbacks, or pass a folder: LearningCurves(\"plots\")."
            )

    @on(BatchEnd, phase=TrainingPhase)
    def batch_end(self, event: Event, phase: Phase, learner: Any) -> None:
        cbstate = learner.cbstate
        if "hyperparams" in cbstate:
            recorded = cbstate.hyperparams
            step = cbstate.history[phase].steps if "history" in cbstate else len(self._steps) + 1
            self._steps.append(step)
            for key, value in recorded.items():
                if key.startswith("lr/"):
                    self._lr.setdefault(key, []).append(float(value))

    @on(EpochEnd, phase=ValidationPhase)
    def validation_end(self, event: Event, phase: Phase, learner: Any) -> None:
        self._validates = True
        if self.every_epoch:
            self.save(learner.cbstate)

    @on(EpochEnd, phase=TrainingPhase)
    def training_end(self, event: Event, phase: Phase, learner: Any) -> None:
        if self.every_epoch and not self._validates:  # else the validation epoch's plot follows
            self.save(learner.cbstate)

    @on(FitEnd)
    def fit_end(self, event: Event, phase: Phase, learner: Any) -> None:
        self.save(learner.cbstate)

    def save(self, cbstate: Any = None) -> list[Path]:
        """Draw the plots now (from ``cbstate``, by default the last one seen) and return
        their files."""
        if cbstate is not None:
            self._epochs = {k: list(v) for k, v in cbstate.metrics.epochs.items()}
            if self._place is None:
                self._place = cbstate.run.path / "plots"
        if self._place is None:
            raise ValueError("LearningCurves.save() has no folder yet: call it after fit has begun, or give a folder.")
        written = plot_learning_curves(self._epochs, self._place)
        if self._lr and len(self._steps) > 1:
            written.append(plot_curve(self._steps, self._lr, self._place / "lr.png", title="lr"))
        return sorted(written)

    def state_dict(self) -> dict[str, Any]:
        """The learning rates recorded so far, for the ``lr`` curve of a resumed run."""
        return {"steps": list(self._steps), "lr": {k: list(v) for k, v in self._lr.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._steps = [int(s) for s in state["steps"]]
        self._lr = {str(k): [float(x) for x in v] for k, v in state["lr"].items()}
