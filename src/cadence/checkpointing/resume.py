"""One call of ``Learner.fit`` as checkpoints see it: where training is, what a checkpoint of it
holds, and how a resumed fit gets back to exactly that point.

The learner makes a ``FitRun`` per ``fit``. It counts the training batches drawn (only when
there is a ``Checkpointer`` or a mid-epoch resume: the training data is then wrapped, which
costs one generator step per batch; the wrapper is what ``EpochBegin.data`` holds, and it
forwards attribute reads and ``len()`` to the data, so ``event.data.sampler.set_epoch(epoch)``
works as without it), records the RNG states when each training epoch's iterator is created,
and turns SIGTERM and Ctrl-C into a checkpoint at the next consistent point.

The callback that saves checkpoints is found by what it does, not by its class: any callback
implementing ``cadence.checkpointing.saver.CheckpointSaver`` (``Checkpointer`` does), so that this core
module does not depend on ``cadence.callbacks``.

Resuming replays the events that lead to the checkpoint's position, then puts every piece of
state back as it was there:

- a checkpoint at an epoch boundary is restored right after ``FitBegin``;
- a checkpoint in the middle of a training epoch is restored after that epoch's
  ``EpochBegin``: the RNGs (and a ``DistributedSampler``'s epoch) are set as they were when
  the epoch's iterator was created, the iterator is created again (same shuffle), the batches
  already done are skipped (``cadence.checkpointing.replay.skip_batches``), and the RNGs are set as they were
  at the checkpoint.

So ``FitBegin`` and ``EpochBegin`` handlers run as usual, and whatever they change that a
checkpoint holds is then overwritten with the saved state.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterable, Iterator, Mapping, Sized
from pathlib import Path
from types import FrameType
from typing import Any

from cadence.checkpointing.files import Checkpoint, CheckpointError, latest_checkpoint, load_checkpoint
from cadence.errors import CancelFit
from cadence.phases import Phase, TrainingPhase, ValidationPhase
from cadence.checkpointing.replay import data_generators, length, sampler_epochs, set_sampler_epochs, skip_batches
from cadence.checkpointing.rng import capture_rng, restore_rng
from cadence.checkpointing.saver import CheckpointSaver, find_saver
from cadence.checkpointing.snapshot import capture_state, check_fits, restore_state

__all__ = ["FitRun"]

log = logging.getLogger(__name__)

Resume = str | os.PathLike[str]


class FitRun:
    """Position, capture and restore for one ``fit``; built by the learner before ``FitBegin``.

    Attributes:
        epoch: Index of the current training epoch, from 0, counted over the whole run: a
            ``fit`` resumed in its third epoch starts at 2, as ``range(n_epochs)`` does.
        batch: Training batches drawn so far in that epoch.
        step: Training batches drawn so far in the run (carried over by a resume).
        validates: Whether each training epoch is followed by validation.
        interrupted: ``"SIGTERM"`` or ``"SIGINT"`` once one arrived, else None.
        saved: The last checkpoint written during this fit.
    """

    def __init__(
        self, learner: Any, n_epochs: int, train: Iterable[Any], validates: bool, resume: Resume | None
    ) -> None:
        self.learner, self.n_epochs, self.train, self.validates = learner, n_epochs, train, validates
        self.checkpointer: CheckpointSaver | None = find_saver(learner.callbacks)
        self.epoch = self.batch = self.step = 0
        self.epoch_rng: dict[str, Any] | None = None
        self.epoch_samplers: dict[str, int] = {}
        self.generators = data_generators(train)
        self.interrupted: str | None = None
        self.saved: Path | None = None
        self._resuming = None if resume is None else self._find(resume)
        if self._resuming is not None:
            self._check(self._resuming)
        position = self._resuming.meta["position"] if self._resuming is not None else {"epoch": 0, "batch": 0}
        self.first_epoch: int = position["epoch"]
        tracked = self.checkpointer is not None or position["batch"] > 0
        wrapper = _SizedTracked if isinstance(train, Sized) else _Tracked
        self._data = wrapper(train, self) if tracked else train
        self._handlers: dict[int, Any] = {}
        self._install_signal_handlers()
        if self.checkpointer is not None:
            self.checkpointer.attach_run(self)

    # ---- the learner's calls ------------------------------------------------------------------

    def fit_began(self) -> None:
        """After ``FitBegin``: restore a checkpoint taken at an epoch boundary."""
        checkpoint = self._resuming
        if checkpoint is None or checkpoint.meta["position"]["batch"] > 0:
            return
        self._resuming = None
        self._restore(checkpoint)
        restore_rng(checkpoint.state["rng"]["now"], self.generators)

    def training_data(self, epoch: int) -> Iterable[Any]:
        """The training data of epoch ``epoch``, wrapped to count batches when needed."""
        if self._resuming is not None and epoch > self.first_epoch:
            # The resumed epoch was cancelled before its data was iterated: restore anyway.
            checkpoint, self._resuming = self._resuming, None
            log.warning(
                "The resumed epoch %d ended before its first batch; its rest was skipped.", self.first_epoch + 1
            )
            self._restore(checkpoint)
            restore_rng(checkpoint.state["rng"]["now"], self.generators)
        self.epoch = epoch
        return self._data

    def close(self) -> None:
        """Before ``FitEnd``: put the previous signal handlers back and detach the saver."""
        for signum, previous in self._handlers.items():
            signal.signal(signum, previous)
        self._handlers.clear()
        if self.checkpointer is not None:
            self.checkpointer.detach_run(self)

    def outcome(self, result: CancelFit | None) -> CancelFit | None:
        """``fit``'s return value, unless a signal interrupted it: then, after ``FitEnd``, raise
        ``KeyboardInterrupt`` (Ctrl-C) or ``SystemExit(143)`` (SIGTERM), saying where the
        checkpoint is."""
        if self.interrupted is None:
            return result
        where = (
            f"checkpoint saved to {self.saved}; continue with fit({self.n_epochs}, resume=\"latest\")"
            if self.saved is not None
            else "no checkpoint was saved"
        )
        message = f"Training stopped by {self.interrupted}: {where}."
        if self.interrupted == "SIGINT":
            raise KeyboardInterrupt(message)
        log.warning(message)
        raise SystemExit(128 + signal.SIGTERM)

    # ---- for the Checkpointer -----------------------------------------------------------------

    def ends_epoch(self, phase: Phase) -> bool:
        """Whether ``EpochEnd`` of ``phase`` completes a whole epoch (validation included)."""
        return isinstance(phase, ValidationPhase if self.validates else TrainingPhase)

    def capture(self, *, epoch_end: bool) -> tuple[dict[str, Any], dict[str, Any]]:
        """What a checkpoint taken now holds: ``(state, meta)``. ``epoch_end`` says the current
        epoch is complete (the position is then the start of the next one)."""
        state, meta = capture_state(self.learner, self._extra())
        epoch, batch = (self.epoch + 1, 0) if epoch_end else (self.epoch, self.batch)
        state["rng"] = {"now": capture_rng(self.generators)}
        if not epoch_end:
            state["rng"]["epoch"] = self.epoch_rng
            state["rng"]["samplers"] = self.epoch_samplers
        meta.update(position={"epoch": epoch, "batch": batch, "step": self.step}, n_epochs=self.n_epochs)
        return state, meta

    def _extra(self) -> Mapping[str, Any]:
        return self.checkpointer.extra if self.checkpointer is not None else {}

    # ---- resuming -----------------------------------------------------------------------------

    def _find(self, resume: Resume) -> Checkpoint | None:
        if isinstance(resume, str) and resume == "latest":
            if self.checkpointer is None:
                raise CheckpointError(
                    'fit(resume="latest") looks in the Checkpointer\'s folder, but this learner has no '
                    'Checkpointer. Add one, e.g. callbacks=[Checkpointer("checkpoints")], or pass the '
                    'path of a checkpoint: fit(..., resume="checkpoints/checkpoint-000012-epoch3-batch40.pt").'
                )
            found = latest_checkpoint(self.checkpointer.folder)
            if found is None:
                log.info("No checkpoint in %s yet: starting from the beginning.", self.checkpointer.folder)
            return found
        if not isinstance(resume, (str, os.PathLike)):
            raise TypeError(
                f'fit(resume=...) expects "latest", a checkpoint\'s path or a folder of checkpoints; '
                f'got {type(resume).__name__}. Pass e.g. resume="latest" (with a Checkpointer), '
                f'resume="checkpoints" or resume="checkpoints/checkpoint-000012-epoch3-batch40.pt".'
            )
        if Path(resume).is_dir():
            found = latest_checkpoint(resume)
            if found is None:
                raise CheckpointError(
                    f"fit(resume={str(resume)!r}): the folder has no checkpoint. Pass the folder a "
                    f"Checkpointer saved to, or leave out resume= to start from the beginning."
                )
            return found
        return load_checkpoint(resume)

    def _check(self, checkpoint: Checkpoint) -> None:
        """Everything that can be checked before ``FitBegin``, so that a checkpoint that does not
        fit this learner fails before training starts."""
        path = checkpoint.path
        _check_structure(checkpoint)
        epoch, batch = checkpoint.meta["position"]["epoch"], checkpoint.meta["position"]["batch"]
        if epoch > self.n_epochs or (batch > 0 and epoch >= self.n_epochs):
            raise CheckpointError(
                f"{path} is at epoch {epoch + 1}, batch {batch}, past the end of fit({self.n_epochs}); "
                f"n_epochs is the total, so ask for more, e.g. fit({epoch + 1}, resume=...)."
            )
        n_batches = length(self.train)
        if n_batches is not None and batch > n_batches:
            raise CheckpointError(
                f"{path} was taken after batch {batch} of an epoch, but the training data has "
                f"{n_batches} batches. Resume with the same training data."
            )
        check_fits(checkpoint, self.learner, self._extra())
        if batch > 0 and getattr(self.train, "persistent_workers", False):
            log.warning(
                "Resuming %s mid-epoch with persistent_workers=True: the DataLoader draws its seed "
                "only when its workers start, so the order of later epochs may differ.", path,
            )

    def _restore(self, checkpoint: Checkpoint) -> None:
        position = checkpoint.meta["position"]
        self.epoch, self.batch, self.step = position["epoch"], position["batch"], position["step"]
        restore_state(checkpoint, self.learner, self._extra())
        log.info("Resumed from %s (epoch %d, batch %d).", checkpoint.path, self.epoch + 1, self.batch)

    def resume_mid_epoch(self) -> Iterator[Any]:
        """After ``EpochBegin`` of the resumed epoch: restore, then iterate from the next batch."""
        checkpoint = self._resuming
        assert checkpoint is not None
        self._resuming = None
        self._restore(checkpoint)
        rng = checkpoint.state["rng"]
        self.epoch_rng, self.epoch_samplers = rng["epoch"], dict(rng.get("samplers", {}))
        # An EpochBegin handler calling sampler.set_epoch ran before the restore, from fresh state.
        set_sampler_epochs(self.train, self.epoch_samplers)
        restore_rng(rng["epoch"], self.generators)
        return skip_batches(self.train, self.batch, lambda: restore_rng(rng["now"], self.generators))

    # ---- signals --------------------------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        # Only the main thread may set handlers; a user's own handler is left alone.
        if threading.current_thread() is not threading.main_thread():
            return
        wanted: list[tuple[int, Any]] = [(signal.SIGTERM, signal.SIG_DFL)]
        if self.checkpointer is not None:
            wanted.append((signal.SIGINT, signal.default_int_handler))
        for signum, default in wanted:
            if signal.getsignal(signum) is default:
                self._handlers[signum] = default
                signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.checkpointer is None or self.interrupted is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            log.warning("Training stopped by %s; FitEnd cleanup runs, no checkpoint is saved.", name)
            raise SystemExit(128 + signum)
        self.interrupted = name
        again = " (press Ctrl-C again to stop at once)" if signum == signal.SIGINT else ""
        log.warning("%s: saving a checkpoint at the end of this batch, then stopping%s.", name, again)


class _Tracked:
    """The training data of one fit: counts the batches drawn and records the RNG states when
    an epoch's iterator is created (where a shuffling DataLoader draws its order)."""

    def __init__(self, data: Iterable[Any], run: FitRun) -> None:
        self.data, self.run = data, run
        self.__wrapped__ = data  # what warnings about the data describe
        self.batches_skipped_by_resume = 0  # a resumed epoch may have no batch left: no warning

    def __iter__(self) -> Iterator[Any]:
        run = self.run
        self.batches_skipped_by_resume = 0
        if run._resuming is not None:
            iterator = run.resume_mid_epoch()
            self.batches_skipped_by_resume = run.batch
        else:
            run.epoch_rng = capture_rng(run.generators)
            run.epoch_samplers = sampler_epochs(self.data)
            run.batch = 0
            iterator = iter(self.data)
        for batch in iterator:
            run.batch += 1
            run.step += 1
            yield batch

    def __getattr__(self, name: str) -> Any:
        # EpochBegin.data is this wrapper: handlers read the data's attributes through it
        # (event.data.sampler.set_epoch(epoch) for a DistributedSampler).
        if name in ("data", "run", "__wrapped__", "batches_skipped_by_resume"):  # not set yet (copy, pickle)
            raise AttributeError(name)
        return getattr(self.data, name)

    def __repr__(self) -> str:
        return f"{self.data!r} (batches counted for checkpoints)"


class _SizedTracked(_Tracked):
    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]


def _check_structure(checkpoint: Checkpoint) -> None:
    """A checkpoint of a fit has these parts; a file without them is refused, not half-used."""
    meta, state = checkpoint.meta, checkpoint.state
    position = meta.get("position")
    parts = {
        "position": isinstance(position, dict)
        and all(type(position.get(k)) is int and position[k] >= 0 for k in ("epoch", "batch", "step")),
        "optimizer class": isinstance(meta.get("optimizer"), str),
        "callback classes": isinstance(meta.get("callbacks"), dict),
        "rng": isinstance(state.get("rng"), dict) and "now" in state["rng"],
        **{key: isinstance(state.get(key), dict) for key in ("model", "optimizer", "callbacks", "cbstate", "extra")},
    }
    broken = [name for name, ok in parts.items() if not ok]
    if broken:
        raise CheckpointError(
            f"{checkpoint.path} is not a checkpoint of a fit: {', '.join(broken)} missing or malformed. "
            f"Resume from a checkpoint a Checkpointer wrote."
        )
