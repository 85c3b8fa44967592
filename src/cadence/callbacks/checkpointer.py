"""Checkpointer: saves checkpoints during ``fit`` so that a killed run continues where it stopped."""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cadence import READ, Callback, CancelFit, on
from cadence.callbacks.monitor import Monitor
from cadence.checkpointing.files import (
    CheckpointError,
    list_checkpoints,
    read_meta,
    scan_folder,
    sequence_of,
    write_checkpoint,
)
from cadence.checkpointing.saver import FitProgress
from cadence.distributed.checkpoints import checkpoint_meta, write_once
from cadence.events import BatchEnd, EpochEnd, Event
from cadence.phases import Phase, TrainingPhase
from cadence.introspection.signatures import constructor_repr

__all__ = ["Checkpointer"]

log = logging.getLogger(__name__)

_TEMPORARY = re.compile(r"^\.checkpoint-\d+.*\.(\d+)\.tmp$")
_FIX = 'Checkpointer("checkpoints", keep_best=1, monitor="{key}")'


class Checkpointer(Callback):
    """Saves a checkpoint every ``every_epochs`` epochs (after validation) and/or every
    ``every_steps`` training batches, keeps the newest ``keep_last`` and the ``keep_best`` best
    by ``monitor``, and saves one more, then stops, on SIGTERM or Ctrl-C. Continue a run with
    ``learner.fit(n_epochs, resume="latest")``: it starts at the batch after the newest intact
    checkpoint (or from the beginning when the folder has none).

    A checkpoint holds the model, the optimizer, every callback's ``state_dict()``, the
    ``cbstate`` entries, the ``extra`` objects, the RNG states and the position in the data;
    see ``cadence.checkpointing.files`` for the files and ``cadence.checkpointing.resume`` for
    what a resume does.

    In a distributed fit (``cadence.distributed``) it runs on every rank, whose save points
    are the same: rank 0 alone writes, once every rank has reached the step (see
    ``cadence.distributed.checkpoints``); the folder must be one every rank can read to resume.

    It runs after every other callback (``run_after = (Callback,)``), so a checkpoint holds
    what they all did at that event. A learner takes one ``Checkpointer``, and no callback may
    name it in its ``run_after``; both are refused when the learner is built. It implements
    ``cadence.checkpointing.saver.CheckpointSaver``, through which ``fit`` drives it.

    Args:
        folder: Where the checkpoints go; created at the first save. None: ``checkpoints``
            in the run folder (add ``RunFolder()``; until the Checkpointer joins a learner,
            ``folder`` reads ``<run folder>/checkpoints``).
        every_epochs: Save after every N-th epoch; None for never.
        every_steps: Save after every N-th training batch; None (the default) for never.
        keep_last: How many of the newest checkpoints to keep, at least 1.
        keep_best: How many of the best checkpoints by ``monitor`` to keep as well; the best
            is ``best_path``, which ``learner.load(...)`` loads.
        monitor: The ``cbstate.metrics`` key ``keep_best`` ranks by, e.g. ``"valid/loss"``.
            With ``keep_best``, or another key than the default, a key that will not exist is a
            ``MissingStateError`` when the learner is built or its phase's first epoch ends,
            as for ``EarlyStopping``.
        mode: ``"min"`` (lower is better) or ``"max"``.
        extra: Other objects with ``state_dict()`` and ``load_state_dict()`` to save and
            restore, by name, e.g. ``{"lr_scheduler": scheduler, "scaler": grad_scaler}``.

    Example:
        >>> import tempfile
        >>> from cadence.testing import make_test_learner
        >>> folder = tempfile.mkdtemp()
        >>> learner = make_test_learner(Checkpointer(folder, every_epochs=1, keep_last=2), n_batches=4)
        >>> _ = learner.fit(3)
        >>> [p.name for p in list_checkpoints(folder)]
        ['checkpoint-000002-epoch2-batch0.pt', 'checkpoint-000003-epoch3-batch0.pt']
    """

    state_access = {"model": READ, "optimizer": READ, "cbstate": READ}
    run_after = (Callback,)
    writes_files = True  # fit(fast_dev_run=True) runs without it
    #: The run this Checkpointer's checkpoints belong to, written into each one's metadata
    #: (``"run"``); set when a fit starts, None before the first. A second fit of the same
    #: learner goes on with it, saving on into the folder; see ``cadence.checkpointing.folder``.
    run_id: str | None = None

    def __init__(
        self,
        folder: str | os.PathLike[str] | None = None,
        *,
        every_epochs: int | None = 1,
        every_steps: int | None = None,
        keep_last: int = 2,
        keep_best: int = 0,
        monitor: str = "valid/loss",
        mode: str = "min",
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        if folder is not None and not isinstance(folder, (str, os.PathLike)):
            raise TypeError(
                f'Checkpointer(folder=...) expects a path, e.g. "checkpoints"; got {type(folder).__name__}.'
            )
        for name, value, least in (("every_epochs", every_epochs, 1), ("every_steps", every_steps, 1)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
                raise ValueError(f"Checkpointer({name}={value!r}): use an int >= 1, or None for never.")
        if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1:
            raise ValueError(
                f"Checkpointer(keep_last={keep_last!r}): use an int >= 1 (the newest is always kept)."
            )
        if isinstance(keep_best, bool) or not isinstance(keep_best, int) or keep_best < 0:
            raise ValueError(f"Checkpointer(keep_best={keep_best!r}): use an int >= 0.")
        watched = Monitor("Checkpointer", monitor, mode, _FIX)
        # Without keep_best, the default key is only recorded in each checkpoint's metadata.
        self._watched = watched if keep_best or monitor != "valid/loss" else None
        extra = dict(extra or {})
        for key, obj in extra.items():
            if not all(callable(getattr(obj, m, None)) for m in ("state_dict", "load_state_dict")):
                raise TypeError(
                    f"Checkpointer(extra={{{key!r}: ...}}) needs an object with state_dict() and "
                    f"load_state_dict(), such as an LR scheduler or a GradScaler; got {type(obj).__name__}."
                )
        self._folder = None if folder is None else Path(folder)
        if self._folder is None:  # the build then asks for a RunFolder (MissingStateError)
            self.state_access = {**type(self).state_access, "cbstate.run": READ}
        self._run_folder: Any = None
        self.every_epochs, self.every_steps = every_epochs, every_steps
        self.keep_last, self.keep_best, self.monitor, self.mode = keep_last, keep_best, monitor, mode
        self.extra: dict[str, Any] = extra
        self._run: FitProgress | None = None

    @property
    def best_path(self) -> Path | None:
        """The kept checkpoint with the best value of ``monitor`` (the oldest of equals), or
        None before one with a value is saved; ``learner.load(checkpointer.best_path)`` loads it.
        Only checkpoints at epoch ends have a value: one taken mid-epoch (``every_steps``, an
        interruption) holds weights no epoch value was measured for.

        Raises:
            ValueError: with ``keep_best=0``, when the best may have been deleted.
        """
        if not self.keep_best:
            raise ValueError(
                f"Checkpointer(keep_best=0) keeps only the newest checkpoints, so the best may be "
                f"gone; ask for it to be kept: Checkpointer({str(self.folder)!r}, keep_best=1, "
                f'monitor="{self.monitor}", mode="{self.mode}").'
            )
        return next(iter(self._ranked(scan_folder(self.folder).committed)), None)

    @property
    def folder(self) -> Path:
        """Where the checkpoints go."""
        if self._folder is not None:
            return self._folder
        if self._run_folder is None:
            return Path("<run folder>", "checkpoints")
        return Path(self._run_folder.path, "checkpoints")

    def init(self, learner: Any) -> None:
        if self._folder is None:
            self._run_folder = learner.cbstate.run
        if self._watched is not None:
            self._watched.check_planned(learner.cbstate)

    def __repr__(self) -> str:
        # The folder stays first and positional, as it was before it had a default.
        arguments = constructor_repr(self).partition("(")[2][:-1].removeprefix("folder=")
        return f"{type(self).__name__}({arguments})"

    def attach_run(self, run: FitProgress) -> None:
        """Called by ``fit`` when it starts, before ``FitBegin``: the run this callback saves."""
        self._run = run

    def check_resume(self, resume: str | os.PathLike[str]) -> None:
        """Called by ``fit(resume=...)`` before it looks for a checkpoint: refuse ``"latest"``
        in the folder of an unnamed run, which is new at every launch (so it would start from
        the beginning every time), unless an earlier fit of this process saved there."""
        run = self._run_folder
        first = self.run_id is None  # no fit has saved through this Checkpointer yet (on every rank alike)
        if self._folder is None and resume == "latest" and run is not None and not run.named and first:
            raise CheckpointError(
                f'fit(resume="latest") looks for the newest checkpoint in the run folder, but '
                f"RunFolder() has no name: each launch gets a new folder ({run.root}/<date>-<n>), so "
                f"a relaunch never finds the checkpoints of the one before and starts from the "
                f'beginning every time. Name the run, e.g. RunFolder("my-run"), and relaunch with '
                f'the same name; or give the Checkpointer a folder of its own: Checkpointer("checkpoints").'
            )

    def detach_run(self, run: FitProgress) -> None:
        """Called by ``fit`` when it ends, before ``FitEnd``."""
        if self._run is run:
            self._run = None

    @on(BatchEnd, phase=TrainingPhase)
    def batch_end(self, event: Event, phase: Phase, learner: Any) -> None:
        run = self._run
        if run is None:  # an epoch run outside fit
            return
        if run.interrupted is not None:
            self._stop(run, learner, epoch_end=False)
        if self.every_steps is not None and run.step % self.every_steps == 0:
            self._save(run, learner, epoch_end=False, reason=f"every {self.every_steps} steps")
            self._stop_if_interrupted(run)

    @on(EpochEnd)
    def epoch_end(self, event: Event, phase: Phase, learner: Any) -> None:
        run = self._run
        if self._watched is not None and "metrics" in learner.cbstate:
            if self._watched.watches(phase):
                self._watched.check(learner.cbstate.metrics)
            if run is not None and run.ends_epoch(phase):  # every phase of the epoch has ended
                self._watched.check_epoch(learner.cbstate.metrics, {TrainingPhase.name, phase.name})
        if run is None or not run.ends_epoch(phase):
            return
        if run.interrupted is not None:
            self._stop(run, learner, epoch_end=True)
        if self.every_epochs is not None and (run.epoch + 1) % self.every_epochs == 0:
            self._save(run, learner, epoch_end=True, reason=f"every {self.every_epochs} epochs")
            self._stop_if_interrupted(run)

    def _stop(self, run: FitProgress, learner: Any, *, epoch_end: bool) -> None:
        path = self._save(run, learner, epoch_end=epoch_end, reason=run.interrupted or "")
        raise CancelFit(f"{run.interrupted}: checkpoint saved to {path}")

    def _stop_if_interrupted(self, run: FitProgress) -> None:
        # A signal that came while this routine checkpoint was written: it is the one to keep.
        if run.interrupted is not None:
            raise CancelFit(f"{run.interrupted}: checkpoint saved to {run.saved}")

    def _save(self, run: FitProgress, learner: Any, *, epoch_end: bool, reason: str) -> Path:
        """Write a checkpoint of ``run`` now, then drop the ones no longer kept."""
        started = time.perf_counter()
        state, meta = run.capture(epoch_end=epoch_end)
        # A value is a whole epoch's: a checkpoint in the middle of the next one does not have it.
        value = self._monitored(learner) if epoch_end else None
        meta.update(monitor=self.monitor, mode=self.mode, value=value, reason=reason)
        meta.update(checkpoint_meta())
        position = meta["position"]

        def write() -> Path:  # on rank 0 only in a distributed fit
            sequence = self._next_sequence()
            name = f"checkpoint-{sequence:06d}-epoch{position['epoch']}-batch{position['batch']}"
            path = write_checkpoint(self.folder, name, state, meta)
            log.info("Saved %s (%s) in %.3f s.", path, reason, time.perf_counter() - started)
            self._rotate()
            return path

        path = write_once(position["step"], write)
        run.saved = path
        return path

    def _monitored(self, learner: Any) -> float | None:
        if "metrics" not in learner.cbstate:
            return None
        values = getattr(learner.cbstate.metrics, "epochs", {}).get(self.monitor)
        return float(values[-1]) if values else None

    def _next_sequence(self) -> int:
        names = os.listdir(self.folder) if self.folder.is_dir() else []
        return max([0, *(sequence_of(Path(n.lstrip("."))) for n in names)]) + 1  # other files: -1

    def _rotate(self) -> None:
        # Checkpoints whose files link out of the folder (refused) are left alone, links and all.
        scan = scan_folder(self.folder)
        committed = scan.committed
        keep = set(committed[-self.keep_last :])
        if self.keep_best:
            keep.update(self._ranked(committed)[: self.keep_best])
        for path in committed:
            if path not in keep:
                path.with_suffix(".json").unlink(missing_ok=True)  # uncommit first
                path.unlink(missing_ok=True)
        newest, listed = (sequence_of(committed[-1]) if committed else 0), {*committed, *scan.refused}
        for entry in self.folder.iterdir():
            temporary = _TEMPORARY.match(entry.name)
            if temporary:
                if not _alive(int(temporary.group(1))):
                    entry.unlink(missing_ok=True)  # left by a process killed while writing
            elif entry.suffix == ".pt" and entry not in listed and 0 <= sequence_of(entry) < newest:
                entry.unlink(missing_ok=True)  # its .json was never written: a crash between the two

    def _ranked(self, committed: list[Path]) -> list[Path]:
        """The checkpoints with a value of ``monitor``, best first; of equal ones the oldest, as
        a later equal value is no improvement (``EarlyStopping`` keeps the same epoch)."""
        sign = 1.0 if self.mode == "min" else -1.0
        scored = []
        for path in committed:
            value = _value(path, self.monitor)
            if value is not None:
                scored.append((sign * value, sequence_of(path), path))
        return [path for *_, path in sorted(scored)]


def _value(path: Path, monitor: str) -> float | None:
    try:
        meta = read_meta(path.with_suffix(".json"))
    except CheckpointError:  # an unreadable checkpoint is not among the best
        return None
    value = meta.get("value")
    if meta.get("monitor") != monitor or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True
