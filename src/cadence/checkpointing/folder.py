"""A checkpoint folder belongs to one run. A fresh ``fit`` into a folder that holds another
run's checkpoints would continue their numbering, delete its own checkpoints as they rotate
out and keep the old run's best; it is refused before ``FitBegin``, with the three ways on:
resume that run, use another folder, or move the old checkpoints aside with
``archive_checkpoints``.

Which run a checkpoint belongs to is written into its metadata (``"run"``, a random id). A
fit's run is the run of the checkpoint it resumes; otherwise, when the saver's last fit was in
the same learner, that fit's run (a second ``fit`` of a learner continues its training, so it
saves on into the folder, numbering on); otherwise a new one."""

from __future__ import annotations

import datetime
import os
import re
import uuid
from pathlib import Path
from typing import Any

from cadence.checkpointing.files import Checkpoint, StrPath, read_meta, scan_folder, sequence_of
from cadence.errors import CheckpointError

__all__ = ["archive_checkpoints", "claim_folder", "new_run_id"]

_OURS = re.compile(r"^\.?checkpoint-\d+")  # checkpoints, and the leftovers of their writes


def claim_folder(folder: Path, resumed: Checkpoint | None, previous: str | None, new: str) -> str:
    """The run of a fit that saves into ``folder``: ``resumed``'s run, else ``previous`` (the
    run of the saver's last fit in this learner), else ``new`` (``new_run_id()``, the same on
    every rank of a distributed fit); after checking that every checkpoint in ``folder`` is of
    that run (a checkpoint resumed from ``folder`` itself needs no check: that fit continues
    the folder's run).

    Raises:
        CheckpointError: naming the folder, its newest checkpoint of another run and the
            three fixes.
    """
    run = resumed.meta.get("run") if resumed is not None else previous
    if resumed is not None and _same(resumed.path.parent, folder):
        return run or new
    scan = scan_folder(folder)
    found = [*scan.committed, *scan.refused]
    others = [p for p in found if run is None or _run_of(p) != run]
    if not others:
        return run or new
    newest = max(others, key=sequence_of)
    name = str(folder)
    held = f"holds {len(others)} checkpoint(s) of another run (the newest: {newest.name})"
    if resumed is None:
        problem = f"This fit would save into {name!r}, which {held}"
        resume = f"continue that run instead: {_continue(newest)}"
    else:
        problem = f"fit(resume=...) continues {resumed.path}, but would save into {name!r}, which {held}"
        resume = f"save the continued run where it came from: Checkpointer({str(resumed.path.parent)!r})"
    raise CheckpointError(
        f"{problem}. A checkpoint folder belongs to one run: mixing two would continue the old "
        f"numbering, rotate this run's checkpoints out and keep the old run's best. Either "
        f"{resume}; or give this run a folder of its own: Checkpointer({name + '-2'!r}); or start "
        f"over in this one after moving the old checkpoints into a subfolder: "
        f"cadence.checkpoint.archive_checkpoints({name!r})."
    )


def new_run_id() -> str:
    """A new run's id: random, 32 hex digits."""
    return uuid.uuid4().hex


def _meta(path: Path) -> dict[str, Any] | None:
    try:
        return read_meta(path.with_suffix(".json"))
    except CheckpointError:  # unreadable: not known to be of any run
        return None


def _run_of(path: Path) -> str | None:
    meta = _meta(path)
    return None if meta is None else meta.get("run")


def _continue(newest: Path) -> str:
    """How to continue the run ``newest`` is of, saying what ``n_epochs`` means there."""
    meta = _meta(newest) or {}
    position, total = meta.get("position"), meta.get("n_epochs")
    call = 'fit(n_epochs, resume="latest"), where n_epochs counts all the run\'s epochs, those before its checkpoint included'
    if position is None or total is None:
        return call
    epoch, batch = position["epoch"], position["batch"]
    taken = f"after batch {batch} of epoch {epoch + 1}" if batch else f"after epoch {epoch}"
    left = "finishes that fit" if epoch < total or batch else "has nothing left to train"
    return (
        f'{call} (its newest was taken {taken} of a fit({total}), so fit({total}, resume="latest") {left} '
        f'and fit({total + 1}, resume="latest") trains one epoch more)'
    )


def _same(a: Path, b: Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def archive_checkpoints(folder: StrPath) -> Path | None:
    """Move the checkpoints in ``folder`` (and the leftovers of interrupted writes) into a new
    subfolder ``previous-<UTC time>`` and return it, or None when there was nothing to move.

    Nothing is deleted or overwritten: each file is renamed within the folder's file system,
    the ``.pt`` files before the ``.json`` files that commit them, so an interrupted archive
    leaves every checkpoint whole in one of the two folders (run it again to move the rest).
    Links are moved as links. Other files in ``folder`` stay where they are.

    Example:
        >>> import tempfile
        >>> from cadence.testing import make_test_learner
        >>> from cadence.callbacks.checkpointer import Checkpointer
        >>> from cadence.checkpoint import list_checkpoints
        >>> folder = tempfile.mkdtemp()
        >>> _ = make_test_learner(Checkpointer(folder), n_batches=2).fit(1)
        >>> moved = archive_checkpoints(folder)
        >>> list_checkpoints(folder), [p.name for p in list_checkpoints(moved)]
        ([], ['checkpoint-000001-epoch1-batch0.pt'])
    """
    folder = Path(folder)
    names = sorted(n for n in os.listdir(folder) if _OURS.match(n)) if folder.is_dir() else []
    if not names:
        return None
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target, number = folder / f"previous-{stamp}", 1
    while True:
        try:
            target.mkdir()
            break
        except FileExistsError:
            number += 1
            target = folder / f"previous-{stamp}-{number}"
    for name in sorted(names, key=lambda n: n.endswith(".json")):  # .json last: they commit
        os.rename(folder / name, target / name)
    return target
