"""LearningCurves: PNG plots of every metric, train against valid, and of the learning rate."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from cadence import READ, Callback, on
from cadence.events import BatchEnd, EpochEnd, Event, FitBegin, FitEnd
from cadence.loggers.extras import require
from cadence.loggers.plots import plot_curve, plot_learning_curves
from cadence.phases import Phase, TrainingPhase, ValidationPhase

__all__ = ["LearningCurves"]

_clock = time.perf_counter
_BUDGET = 10  # an epoch end redraws once this many times the last drawing's duration has passed
_MAX_POINTS = 2000  # of the lr curve, after decimation (at most twice as many before)


class LearningCurves(Callback):
    """Saves a PNG per metric (its epoch values, one line per phase) as epochs end and when
    ``fit`` ends, and ``lr.png`` (the learning rate per training step, each param group a
    line) when a ``Scheduler`` runs. Call ``save()`` for the plots on demand. A second fit of
    the same learner draws on from the first fit's curves; reused in another learner, it starts
    afresh.

    Args:
        folder: Where the PNGs go; None for ``plots`` in the run folder (add ``RunFolder()``).
        every_epoch: Redraw as epochs end; False draws only at ``FitEnd`` (and on ``save()``).

    Drawing a PNG takes about a tenth of a second, so an epoch end (after its validation)
    redraws only when at least ten times the last drawing's duration has passed since it:
    plots take at most about a tenth of the run's time, however short its epochs, and long
    epochs are drawn every time. ``FitEnd`` always draws.

    Needs matplotlib: ``pip install 'cadence[plots]'``. The learning rate is recorded from
    ``cbstate.hyperparams`` (a float per step, no plot per step), at most 4,000 points: when
    there are that many, every other one is dropped and then only every second step is
    recorded, and so on, so memory and checkpoints stay small however long the run.

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
    reset_when = "learner"  # the lr curve goes on along the learner's step axis, as its epoch values do

    def __init__(self, folder: str | os.PathLike[str] | None = None, *, every_epoch: bool = True) -> None:
        require("LearningCurves", "plots", "matplotlib")
        if folder is not None and not isinstance(folder, (str, os.PathLike)):
            raise TypeError(f'LearningCurves(folder=...) expects a path such as "plots"; got {type(folder).__name__}.')
        if not isinstance(every_epoch, bool):
            raise TypeError(f"LearningCurves(every_epoch=...) expects True or False; got {every_epoch!r}.")
        self.folder = None if folder is None else Path(folder)
        if self.folder is None:  # the build then asks for a RunFolder, as for a logger
            self.state_access = {**type(self).state_access, "cbstate.run": READ}
        self.every_epoch = every_epoch
        self._steps: list[int] = []
        self._lr: dict[str, list[float]] = {}
        self._stride = 1  # record the lr every this many steps
        self._count = 0  # training steps seen, for a learner without a Recorder
        self._epochs: dict[str, list[float]] = {}
        self._place: Path | None = self.folder
        self._validates = True
        self._drawn_at = self._cost = 0.0

    @on(FitBegin)
    def fit_begin(self, event: FitBegin, phase: Phase, learner: Any) -> None:
        self._validates = event.data is None or event.data[1] is not None
        self._drawn_at = self._cost = 0.0

    @on(BatchEnd, phase=TrainingPhase)
    def batch_end(self, event: Event, phase: Phase, learner: Any) -> None:
        cbstate = learner.cbstate
        if "hyperparams" not in cbstate:
            return
        self._count += 1
        step = cbstate.history[phase].steps if "history" in cbstate else self._count
        if step % self._stride:
            return
        self._steps.append(step)
        for key, value in cbstate.hyperparams.items():
            if key.startswith("lr/"):
                self._lr.setdefault(key, []).append(float(value))
        if len(self._steps) >= 2 * _MAX_POINTS:
            self._decimate()

    @on(EpochEnd, phase=ValidationPhase)
    def validation_end(self, event: Event, phase: Phase, learner: Any) -> None:
        self._epoch_ended(learner)

    @on(EpochEnd, phase=TrainingPhase)
    def training_end(self, event: Event, phase: Phase, learner: Any) -> None:
        if not self._validates:  # else the validation epoch's end draws
            self._epoch_ended(learner)

    @on(FitEnd)
    def fit_end(self, event: Event, phase: Phase, learner: Any) -> None:
        self.save(learner.cbstate)

    def save(self, cbstate: Any = None) -> list[Path]:
        """Draw the plots now (from ``cbstate``, by default the last one seen) and return
        their files.

        Raises:
            ValueError: no folder yet (no folder given, and no fit has begun to show the run
                folder).
        """
        if cbstate is not None:
            self._epochs = {k: list(v) for k, v in cbstate.metrics.epochs.items()}
            if self._place is None:
                self._place = cbstate.run.path / "plots"
        if self._place is None:
            raise ValueError(
                "LearningCurves.save() has no folder yet: it saves into the run folder, which it "
                "learns when fit begins. Call it after fit has begun, or give a folder: "
                'LearningCurves("plots").'
            )
        started = _clock()
        written = plot_learning_curves(self._epochs, self._place)
        if self._lr and len(self._steps) > 1:
            written.append(plot_curve(self._steps, self._lr, self._place / "lr.png", title="lr"))
        self._drawn_at = _clock()
        self._cost = self._drawn_at - started
        return sorted(written)

    def reset(self) -> None:
        """Reused in another learner: no learning rates recorded, and the plots of the new run
        (in its run folder, unless a folder was given). A second fit of the same learner draws
        on: the ``lr`` curve goes on along the learner's steps, as the epoch values go on in
        ``cbstate.metrics``."""
        self._steps, self._lr, self._epochs = [], {}, {}
        self._stride, self._count = 1, 0
        self._place = self.folder

    def state_dict(self) -> dict[str, Any]:
        """The learning rates recorded so far, for the ``lr`` curve of a resumed run."""
        return {
            "steps": list(self._steps),
            "lr": {k: list(v) for k, v in self._lr.items()},
            "stride": self._stride,
            "count": self._count,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._steps = [int(s) for s in state["steps"]]
        self._lr = {str(k): [float(x) for x in v] for k, v in state["lr"].items()}
        self._stride, self._count = int(state.get("stride", 1)), int(state.get("count", 0))

    def _epoch_ended(self, learner: Any) -> None:
        if self.every_epoch and _clock() - self._drawn_at >= _BUDGET * self._cost:
            self.save(learner.cbstate)

    def _decimate(self) -> None:
        """Keep the points at every other recorded step, and record half as often from now."""
        self._stride *= 2
        keep = [i for i, step in enumerate(self._steps) if step % self._stride == 0]
        self._steps = [self._steps[i] for i in keep]
        self._lr = {key: [values[i] for i in keep] for key, values in self._lr.items()}
