"""SIGTERM and Ctrl-C during a ``fit``: a checkpoint at the next consistent point, then stop.

With a ``Checkpointer``, the first SIGTERM or Ctrl-C (SIGINT) is recorded and training goes on
to the next point where a checkpoint resumes exactly; there the ``Checkpointer`` saves and
stops the fit (``CancelFit``), ``FitEnd`` runs, and ``fit`` raises ``KeyboardInterrupt``
(Ctrl-C) or ``SystemExit(143)`` (SIGTERM) naming the checkpoint. That point depends on where
the signal arrived, and the warning logged when it arrives says which:

- in a training batch (or between two): the end of that batch;
- before an epoch's first training batch (``FitBegin``, ``EpochBegin``): the end of that batch;
- after an epoch's last training batch: the end of the epoch, once its validation has run to
  its end (validation is not cut short: a checkpoint in the middle of it could not resume
  exactly).

If another callback cancels the fit (``CancelFit``) before that point, no checkpoint is saved
for the signal; ``fit`` still raises, saying so and which callback it was.

A second signal stops at once, without a checkpoint: Ctrl-C raises ``KeyboardInterrupt``,
SIGTERM ``SystemExit(143)``, both after ``FitEnd``; the newest checkpoint saved before is what
``resume="latest"`` continues from. Without a ``Checkpointer``, SIGTERM runs ``FitEnd`` and
raises ``SystemExit(143)`` at once, and Ctrl-C is left to Python (``KeyboardInterrupt`` at
once, ``FitEnd`` still runs). Handlers are set only in the main thread and only where
Python's defaults are in place.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from cadence.errors import CancelFit

__all__ = ["Interrupts"]

log = logging.getLogger(__name__)


class _Run(Protocol):
    """What of a ``FitRun`` the handlers read and set."""

    n_epochs: int
    validates: bool
    interrupted: str | None
    saved: Path | None
    stage: str  # "before" the epoch's first batch, in its "batches", or "after" them

    @property
    def saves(self) -> bool: ...

    @property
    def folder(self) -> Path | None: ...


class Interrupts:
    """The signal handlers of one fit: installed when it starts, removed before ``FitEnd``."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        self._previous: dict[int, Any] = {}
        # Only the main thread may set handlers; a user's own handler is left alone.
        if threading.current_thread() is not threading.main_thread():
            return
        wanted: list[tuple[int, Any]] = [(signal.SIGTERM, signal.SIG_DFL)]
        if run.saves:
            wanted.append((signal.SIGINT, signal.default_int_handler))
        for signum, default in wanted:
            if signal.getsignal(signum) is default:
                self._previous[signum] = default
                signal.signal(signum, self._on_signal)

    def close(self) -> None:
        """Put the previous handlers back."""
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        run, name = self.run, signal.Signals(signum).name
        if not run.saves:
            log.warning("Training stopped by %s; FitEnd cleanup runs, no checkpoint is saved.", name)
            raise SystemExit(128 + signum)
        if run.interrupted is not None:
            message = (
                f"Training stopped at once by a second signal ({name}), without saving a checkpoint; "
                f'fit({run.n_epochs}, resume="latest") continues from the newest one in {run.folder}.'
            )
            if signum == signal.SIGINT:
                raise KeyboardInterrupt(message)
            log.warning(message)
            raise SystemExit(128 + signum)
        run.interrupted = name
        again = (
            "press Ctrl-C again to stop at once, without saving"
            if signum == signal.SIGINT
            else "a second SIGTERM or Ctrl-C stops at once, without saving"
        )
        log.warning("%s: %s (%s).", name, _when(run), again)

    def outcome(self, result: CancelFit | None) -> CancelFit | None:
        """``fit``'s return value, unless a signal interrupted it: then, after ``FitEnd``, raise
        ``KeyboardInterrupt`` (Ctrl-C) or ``SystemExit(143)`` (SIGTERM), saying where the
        checkpoint is."""
        run = self.run
        if run.interrupted is None:
            return result
        if result is None:  # it came as the fit ended: every epoch ran
            last = f"; the last checkpoint is {run.saved}" if run.saved is not None else ""
            where = f"it arrived as the fit ended, after every epoch had run{last}"
        elif run.saved is not None:
            where = f'checkpoint saved to {run.saved}; continue with fit({run.n_epochs}, resume="latest")'
        else:  # another callback cancelled the fit before the next point a checkpoint resumes from
            why = f" ({result.reason})" if result.reason else ""
            where = (
                f"no checkpoint was saved, as {result.origin or 'a callback'} cancelled the fit first{why}; "
                f'fit({run.n_epochs}, resume="latest") continues from the newest checkpoint in {run.folder} '
                f"(from the beginning if it has none)"
            )
        message = f"Training stopped by {run.interrupted}: {where}."
        if run.interrupted == "SIGINT":
            raise KeyboardInterrupt(message)
        log.warning(message)
        raise SystemExit(128 + signal.SIGTERM)


def _when(run: _Run) -> str:
    """What happens next, for the warning logged when the first signal arrives."""
    if run.stage == "batches":
        return "saving a checkpoint at the end of this training batch, then stopping"
    if run.stage == "before":
        return "saving a checkpoint at the end of the next training batch, then stopping"
    if run.validates:
        return (
            "finishing this epoch's validation (all of it: a checkpoint in the middle of it could "
            "not resume exactly), then saving a checkpoint and stopping"
        )
    return "saving a checkpoint at the end of this epoch, then stopping"
