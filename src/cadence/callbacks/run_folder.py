"""RunFolder: the run's folder, ``runs/<name>/``, for loggers, checkpoints and plots."""

from __future__ import annotations

import os
from typing import Any

from rich.console import Console

from cadence import WRITE, Callback, on
from cadence.distributed.group import rank
from cadence.events import Event, FitBegin
from cadence.loggers.run import Run
from cadence.phases import Phase

__all__ = ["RunFolder"]


class RunFolder(Callback):
    """Puts the run's folder in ``cbstate.run`` (a ``cadence.loggers.Run``) and prints it at
    the start of every ``fit``. Loggers without a place of their own write there
    (``tensorboard/``, ``mlflow.db``, ``metrics.csv``), as do ``LearningCurves``
    (``plots/``) and a ``Checkpointer()`` without a folder (``checkpoints/``).

    Args:
        name: The folder's name; None for the date and a counter (``2026-12-03-1``), the
            next one free. Give the name to resume a run in a new process.
        root: Where run folders go.
        console: Where to print; rich's console (standard output) by default.

    The folder is chosen and created when something first needs it (at the latest when
    ``fit`` begins), not when the callback is built. In a distributed fit every rank uses the
    folder rank 0 chose (``DataParallel`` settles it before the fit starts), and rank 0 alone
    prints it.

    Example:
        >>> import tempfile
        >>> from cadence import Recorder
        >>> from cadence.testing import make_test_learner
        >>> root = tempfile.mkdtemp()
        >>> learner = make_test_learner(RunFolder("demo", root=root), Recorder())
        >>> _ = learner.fit(1)  # doctest: +ELLIPSIS
        Run folder: .../demo
        >>> learner.cbstate.run.name
        'demo'
    """

    state_access = {"cbstate.run": WRITE}
    writes_files = True  # it creates the folder; fit(fast_dev_run=True) runs without it

    def __init__(
        self, name: str | None = None, *, root: str | os.PathLike[str] = "runs", console: Console | None = None
    ) -> None:
        self.run = Run(name, root=root)
        self.console = console

    def init(self, learner: Any) -> None:
        learner.cbstate.run = self.run

    @on(FitBegin)
    def fit_begin(self, event: Event, phase: Phase, learner: Any) -> None:
        path = learner.cbstate.run.path
        if rank() != 0:  # every rank keeps the run; one prints it (no collective here)
            return
        console = self.console if self.console is not None else Console(soft_wrap=True)
        console.out(f"Run folder: {path}", highlight=False)

    def __repr__(self) -> str:
        return f"RunFolder({self.run!r})"
