"""One call of ``Learner.fit`` as checkpoints see it: where training is, what a checkpoint of it
holds, and how a resumed fit gets back to exactly that point.

The learner makes a ``FitRun`` per ``fit``. It counts the training batches drawn (only when
there is a ``Checkpointer`` or a mid-epoch resume: the training data is then wrapped, which
costs one generator step per batch; the wrapper is what ``EpochBegin.data`` holds, and it
forwards attribute reads and ``len()`` to the data, so ``event.data.sampler.set_epoch(epoch)``
works as without it), records the RNG states when each training epoch's iterator is created,
and turns SIGTERM and Ctrl-C into a checkpoint at the next consistent point
(``cadence.checkpointing.interrupts``). A fit that saves checkpoints owns its saver's folder:
a fresh fit into a folder with another run's checkpoints is refused (a second ``fit`` of the
same learner continues its run: ``cadence.checkpointing.folder``), and so is adding, removing
or replacing the saver while the fit runs (it takes part from the fit's first batch or not at
all).

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
checkpoint holds is then overwritten with the saved state. A resume is logged as a warning
(visible without any logging set up), and so is relaunching a run that has finished.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence, Sized
from pathlib import Path
from typing import Any

from cadence.callback import Callback
from cadence.checkpointing.files import Checkpoint, CheckpointError
from cadence.checkpointing.folder import claim_folder, new_run_id
from cadence.checkpointing.interrupts import Interrupts
from cadence.checkpointing.locate import Resume, find_checkpoint
from cadence.errors import CancelFit
from cadence.phases import Phase, TrainingPhase, ValidationPhase
from cadence.lifecycle.resets import last_fit_in
from cadence.checkpointing.replay import data_generators, length, sampler_epochs, set_sampler_epochs, skip_batches
from cadence.checkpointing.rng import capture_rng, restore_rng
from cadence.checkpointing.saver import CheckpointSaver, find_saver
from cadence.checkpointing.restore import rehearse_restore, restore_state
from cadence.checkpointing.snapshot import capture_state, check_fits
from cadence.distributed.checkpoints import agree_checkpoint, agree_run, check_resume

__all__ = ["FitRun"]

log = logging.getLogger(__name__)


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
        run_id: The run this fit's checkpoints belong to (``cadence.checkpointing.folder``);
            None without a saver.
        stage: Where the current training epoch is: ``"before"`` its first batch, in its
            ``"batches"``, or ``"after"`` them (its ``EpochEnd``, its validation).
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
        self.stage = "before"
        self._resume = resume
        if resume is not None and self.checkpointer is not None:
            self.checkpointer.check_resume(resume)  # before its folder is read (and created)
        folder = self.folder
        # The id of a new run, the same on every rank: a collective, so before anything that
        # reads files (and could fail on one rank only); a fit without a saver has no run.
        fresh = agree_run(new_run_id(), self._layout()) if self.checkpointer is not None else ""
        # On several ranks, rank 0 chooses the checkpoint and every rank loads that file.
        def find(where: Resume) -> Checkpoint | None:
            return find_checkpoint(where, folder)

        self._resuming = None if resume is None else agree_checkpoint(find, resume, self._layout())
        if self._resuming is not None:
            self._check(self._resuming)
        self.run_id: str | None = None
        if self.checkpointer is not None and folder is not None:
            previous = self.checkpointer.run_id if last_fit_in(self.checkpointer, learner) else None
            self.run_id = claim_folder(folder, self._resuming, previous, fresh)
        position = self._resuming.meta["position"] if self._resuming is not None else {"epoch": 0, "batch": 0}
        self.first_epoch: int = position["epoch"]
        tracked = self.checkpointer is not None or position["batch"] > 0
        wrapper = _SizedTracked if isinstance(train, Sized) else _Tracked
        self._data = wrapper(train, self) if tracked else train
        self._interrupts = Interrupts(self)
        if self.checkpointer is not None:
            self.checkpointer.run_id = self.run_id
            self.checkpointer.attach_run(self)

    @property
    def saves(self) -> bool:
        """Whether this fit has a saver (a ``Checkpointer``)."""
        return self.checkpointer is not None

    @property
    def folder(self) -> Path | None:
        """The saver's folder, or None without one."""
        return self.checkpointer.folder if self.checkpointer is not None else None

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
        self.epoch, self.stage = epoch, "before"
        return self._data

    def check_callbacks(self, callbacks: Sequence[Callback]) -> None:
        """Called by the learner when its callbacks change during this fit: refuse a change of
        the saver, which takes part in a fit from its first batch or not at all (it counts
        the batches from the first one to know where a checkpoint resumes).

        Raises:
            CheckpointError: a saver added, removed or replaced while the fit runs.
        """
        saver, current = find_saver(callbacks), self.checkpointer
        if saver is current:
            return
        if current is None:
            change = f"Adding {saver!r} while fit() runs is refused: it would save nothing in this fit"
        elif saver is None:
            change = f"Removing {current!r} while fit() runs is refused: this fit saves through it until it ends"
        else:
            change = (
                f"Replacing {current!r} with {saver!r} while fit() runs is refused: this fit saves "
                f"through {current!r} until it ends"
            )
        raise CheckpointError(
            f"{change}, because a checkpoint saver takes part in a fit from its first batch or not at "
            f"all (it counts the batches from the first one, to know where a checkpoint resumes). "
            f"Change it before calling fit, e.g. learner.add_callback(Checkpointer(\"checkpoints\")) "
            f"then learner.fit(...), or after fit returns."
        )

    def close(self) -> None:
        """Before ``FitEnd``: put the previous signal handlers back and detach the saver."""
        self._interrupts.close()
        if self.checkpointer is not None:
            self.checkpointer.detach_run(self)

    def outcome(self, result: CancelFit | None) -> CancelFit | None:
        """``fit``'s return value, unless a signal interrupted it: then, after ``FitEnd``, raise
        ``KeyboardInterrupt`` (Ctrl-C) or ``SystemExit(143)`` (SIGTERM), saying where the
        checkpoint is (``cadence.checkpointing.interrupts``)."""
        return self._interrupts.outcome(result)

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
        meta.update(
            position={"epoch": epoch, "batch": batch, "step": self.step}, n_epochs=self.n_epochs, run=self.run_id
        )
        return state, meta

    def _extra(self) -> Mapping[str, Any]:
        return self.checkpointer.extra if self.checkpointer is not None else {}

    # ---- resuming -----------------------------------------------------------------------------

    def _check(self, checkpoint: Checkpoint) -> None:
        """Everything that can be checked before ``FitBegin``, so that a checkpoint that does not
        fit this learner fails before training starts: its position, its model, optimizer,
        callbacks and ``cbstate`` entries, and every ``load_state_dict`` tried on a copy
        (``cadence.checkpointing.restore``)."""
        path = checkpoint.path
        epoch, batch = checkpoint.meta["position"]["epoch"], checkpoint.meta["position"]["batch"]
        if epoch > self.n_epochs or (batch > 0 and epoch >= self.n_epochs):
            taken = checkpoint.meta.get("n_epochs")
            within = f" (it was taken in a fit({taken}))" if taken is not None else ""
            raise CheckpointError(
                f"{path} is at epoch {epoch + 1}, batch {batch}, past the end of fit({self.n_epochs}){within}; "
                f"n_epochs counts all the run's epochs, those before the checkpoint included, so ask for "
                f"more, e.g. fit({epoch + 1}, resume=...)."
            )
        n_batches = length(self.train)
        if n_batches is not None and batch > n_batches:
            raise CheckpointError(
                f"{path} was taken after batch {batch} of an epoch, but the training data has "
                f"{n_batches} batches. Resume with the same training data."
            )
        check_fits(checkpoint, self.learner, self._extra())
        check_resume(path, checkpoint.meta, self._layout())
        rehearse_restore(checkpoint, self.learner, self._extra(), (self.train,))
        if batch > 0 and getattr(self.train, "persistent_workers", False):
            log.warning(
                "Resuming %s mid-epoch with persistent_workers=True: the DataLoader draws its seed "
                "only when its workers start, so the order of later epochs may differ; for an exact "
                "resume, build it with persistent_workers=False.", path,
            )

    def _layout(self) -> dict[str, Any] | None:
        """How a distributed fit shards its data (``Strategy.layout()``), None without one."""
        strategy = getattr(self.learner, "strategy", None)
        return None if strategy is None else strategy.layout()

    def _restore(self, checkpoint: Checkpoint) -> None:
        position = checkpoint.meta["position"]
        self.epoch, self.batch, self.step = position["epoch"], position["batch"], position["step"]
        restore_state(checkpoint, self.learner, self._extra())
        log.warning("%s", self._resumed(checkpoint.path))

    def _resumed(self, path: Path) -> str:
        """The line that makes a resumed launch look unlike a fresh start."""
        epoch, batch, n = self.epoch, self.batch, self.n_epochs
        if batch > 0:
            return (
                f"Resumed from {path}, taken after batch {batch} of epoch {epoch + 1} (step {self.step}): "
                f"fit({n}) continues with its batch {batch + 1}."
            )
        if epoch < n:
            return (
                f"Resumed from {path}, taken after epoch {epoch} (step {self.step}): fit({n}) continues "
                f"with epoch {epoch + 1}."
            )
        again = f"resume={str(self._resume)!r}" if self._resume is not None else "resume=..."
        return (
            f"Resumed from {path}, taken at the end of the run: all {n} epochs of fit({n}) have run, "
            f"so there is nothing left to train. To train longer, ask for more epochs in total, e.g. "
            f"fit({max(2 * n, 1)}, {again})."
        )

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
        run.stage = "batches"
        try:
            for batch in iterator:
                run.batch += 1
                run.step += 1
                yield batch
        finally:  # also when the epoch is cancelled and the loop abandons this generator
            run.stage = "after"

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
