"""Checkpoints of a distributed fit: written once, by rank zero, committed only once every rank
has reached the same step, and resumable on another world size.

Every rank runs the ``Checkpointer`` (its save points, every ``every_steps`` training batches
or ``every_epochs`` epochs, are the same on every rank), so every rank takes part in the save:
one all-gather checks that all ranks are at the same step, then rank zero writes both files
(the ``.json`` that commits the checkpoint last) and tells the others the path, or its error.
Nothing else is shared: every rank holds the same model and optimizer, and ``Metrics`` sums
its running totals across ranks when its state is captured.

Every rank claims the checkpoint folder for the fit's run (``cadence.checkpointing.folder``),
with rank zero's id for a new run (``agree_run``), so that a second fit of the same learner
finds, on every rank, the run that rank zero wrote into the checkpoints.

What a resume on another world size keeps (``check_resume``): a checkpoint at an epoch
boundary resumes on any number of processes with any batch size. One taken in the middle of
an epoch resumes with the same global batch, world size × each rank's batch size: then every
remaining step of the epoch trains on the same samples as the run that was interrupted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cadence.distributed.group import all_gather_ints, current, gather_json, rank
from cadence.errors import CheckpointError, DistributedError

if TYPE_CHECKING:
    from cadence.checkpointing.files import Checkpoint

__all__ = ["agree_checkpoint", "agree_run", "check_resume", "checkpoint_meta", "write_once"]


def write_once(step: int, write: Callable[[], Path]) -> Path:
    """Run ``write`` (which writes a checkpoint and returns its path) on rank zero once every
    rank has reached training step ``step``; return the path on every rank. Outside a
    distributed fit, just ``write()``.

    Raises:
        DistributedError: the ranks are at different steps (nothing is written).
        CheckpointError: on the other ranks, when rank zero could not write (rank zero raises
            its own error).
    """
    context = current()
    if context is None or context.world_size == 1:
        return write()
    steps = [row[0] for row in all_gather_ints([step])]
    if len(set(steps)) > 1:
        shown = ", ".join(f"rank {r}: step {s}" for r, s in enumerate(steps))
        raise DistributedError(
            f"A checkpoint was due, but the ranks are at different training steps ({shown}), so "
            f"none is written. Every rank must run the same number of batches: shard the data with "
            f"DataParallel (the default), or give every rank as many batches."
        )
    error: BaseException | None = None
    outcome: dict[str, str] = {}
    if context.rank == 0:
        try:
            outcome["path"] = str(write())
        except BaseException as exc:  # the others wait for the outcome: tell them, then raise
            error = exc
            outcome["error"] = f"{type(exc).__name__}: {exc}"
    result = gather_json(outcome)[0]
    if error is not None:
        raise error
    if "error" in result:
        raise CheckpointError(
            f"Rank 0 could not write the checkpoint of step {step} ({result['error']}); every rank "
            f"stops. Its traceback names the cause."
        )
    return Path(result["path"])


def agree_run(run_id: str, layout: Mapping[str, Any] | None) -> str:
    """Rank zero's ``run_id`` on every rank of a fit with ``layout`` (its
    ``checkpoint_meta()["distributed"]``, None without ``DataParallel``): each rank draws its
    own id for a new run, and only rank zero writes it into the checkpoints. One collective on
    several ranks; ``run_id`` itself otherwise."""
    if layout is None or layout.get("world_size", 1) == 1:
        return run_id
    return str(gather_json(run_id)[0])


def agree_checkpoint(
    find: Callable[[Any], Checkpoint | None], resume: Any, layout: Mapping[str, Any] | None
) -> Checkpoint | None:
    """The checkpoint a fit resumes from, the same on every rank: ``find(resume)`` (which
    looks for it: ``"latest"``, a folder or a path) runs on rank zero, and the others load the
    file it chose, even where their listing of the folder differs (a shared filesystem that
    shows a new checkpoint to some machines first). Two gathers on several ranks (``layout``
    as in ``agree_run``); ``find(resume)`` itself otherwise.

    Raises:
        CheckpointError: on every rank, when rank zero found no checkpoint to resume, or a rank
            could not read the one it chose (that rank raises its own error).
    """
    if layout is None or layout.get("world_size", 1) == 1:
        return find(resume)
    here = rank()
    found: Checkpoint | None = None
    error: BaseException | None = None
    choice: dict[str, str] = {}
    if here == 0:
        try:
            found = find(resume)
            choice = {"path": str(found.path)} if found is not None else {}
        except Exception as exc:  # the others wait for the choice: tell them, then raise
            error = exc
            choice = {"error": f"{type(exc).__name__}: {exc}"}
    chosen = gather_json(choice)[0]
    if error is not None:  # rank 0, and every other rank with the error below: no more collectives
        raise error
    if "error" in chosen:
        raise CheckpointError(
            f"Rank 0 could not find the checkpoint to resume from (fit(resume={str(resume)!r})): "
            f"{chosen['error']} Every rank stops; rank 0's traceback names the cause."
        )
    if here != 0 and "path" in chosen:
        try:
            found = find(Path(chosen["path"]))
        except Exception as exc:
            error = exc
    failures = gather_json(None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    failed = [(r, why) for r, why in enumerate(failures) if why is not None]
    if failed:
        shown = "; ".join(f"rank {r}: {why}" for r, why in failed)
        raise CheckpointError(
            f"Every rank resumes from the checkpoint rank 0 chose, {chosen.get('path', 'none')}, but "
            f"not every rank could read it ({shown}). Keep the checkpoints where every rank reads the "
            f"same files (one folder on a filesystem all machines share)."
        )
    return found


def checkpoint_meta() -> dict[str, Any]:
    """What a checkpoint records of the distributed fit that takes it, for ``check_resume``:
    ``{"distributed": {"world_size", "batch_size", "sharding"}}``, or ``{}`` outside one."""
    context = current()
    if context is None:
        return {}
    layout = {"world_size": context.world_size, "batch_size": context.batch_size, "sharding": context.sharding}
    return {"distributed": layout}


def check_resume(path: Path, meta: Mapping[str, Any], layout: Mapping[str, Any] | None) -> None:
    """Check that the checkpoint at ``path`` can resume here: ``layout`` is this fit's
    ``checkpoint_meta()["distributed"]`` (None without ``DataParallel``).

    Raises:
        CheckpointError: a checkpoint taken in the middle of an epoch, resumed with another
            global batch, another way of sharding, or with and without ``DataParallel``.
    """
    if meta["position"]["batch"] == 0:
        return  # an epoch boundary: any world size and batch size
    saved = meta.get("distributed")
    if saved == layout or (saved is None and layout is None):
        return
    advice = "or resume from a checkpoint taken at the end of an epoch (Checkpointer(every_epochs=1))."
    if saved is None or layout is None:
        taken = "without DataParallel" if saved is None else f"by {saved['world_size']} DataParallel rank(s)"
        here = "this learner has none" if layout is None else "this learner uses DataParallel"
        fix = "Learner(..., strategy=DataParallel())" if layout is None else "Learner(..., strategy=None)"
        raise CheckpointError(
            f"{path} was taken in the middle of an epoch {taken}, and {here}: the two draw the data in "
            f"different orders, so the rest of the epoch would train on other samples. Resume with "
            f"{fix} (the same on one process), {advice}"
        )
    if saved["sharding"] == layout["sharding"] == "samples":
        before, now = saved["world_size"] * saved["batch_size"], layout["world_size"] * layout["batch_size"]
        if before == now:
            return
        wanted = before // layout["world_size"] if before % layout["world_size"] == 0 else None
        fix = f"give the training DataLoader batch_size={wanted}, " if wanted else ""
        raise CheckpointError(
            f"{path} was taken in the middle of an epoch by {saved['world_size']} rank(s) with a batch "
            f"size of {saved['batch_size']} each (a global batch of {before}); this fit has "
            f"{layout['world_size']} with {layout['batch_size']} (a global batch of {now}), so the rest "
            f"of the epoch would train on other samples. Keep the global batch: {fix}{advice}"
        )
    raise CheckpointError(
        f"{path} was taken in the middle of an epoch by {saved['world_size']} rank(s) sharding "
        f"{saved['sharding']}; this fit has {layout['world_size']} sharding {layout['sharding']}. Data "
        f"sharded by whole batches (or by your own DistributedSampler) resumes in the middle of an epoch "
        f"on the same number of ranks only: "
        f"resume with {saved['world_size']} processes, {advice}"
    )
