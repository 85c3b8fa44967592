"""A checkpoint folder belongs to one run. A fresh ``fit`` into a folder that holds an earlier
run's checkpoints would continue their numbering, delete its own checkpoints as they rotate
out and keep the old run's best; it is refused before ``FitBegin``, with the three ways on:
resume that run, use another folder, or move the old checkpoints aside with
``archive_checkpoints``."""

from __future__ import annotations

import datetime
import os
import re
from pathlib import Path

from cadence.checkpointing.files import Checkpoint, StrPath, scan_folder, sequence_of
from cadence.errors import CheckpointError

__all__ = ["archive_checkpoints", "check_own_folder"]

_OURS = re.compile(r"^\.?checkpoint-\d+")  # checkpoints, and the leftovers of their writes


def check_own_folder(folder: Path, resumed: Checkpoint | None, n_epochs: int) -> None:
    """Refuse a fit that would save into ``folder`` while it holds checkpoints of another run:
    any, for a fresh fit; for a resumed one, unless ``resumed`` is one of them.

    Raises:
        CheckpointError: naming the folder, its newest checkpoint and the three fixes.
    """
    scan = scan_folder(folder)
    found = [*scan.committed, *scan.refused]
    if not found or (resumed is not None and _same(resumed.path.parent, folder)):
        return
    newest = max(found, key=sequence_of).name
    name = str(folder)
    held = f"holds {len(found)} checkpoint(s) of an earlier run (the newest: {newest})"
    if resumed is None:
        problem = f"This fit would save into {name!r}, which {held}"
        resume = f'continue that run instead: fit({n_epochs}, resume="latest")'
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
