"""Which checkpoint a ``fit(resume=...)`` continues from: ``"latest"``, a folder or a file,
each checked to be a whole checkpoint of a fit before anything runs. A folder's checkpoints
that fail that check are skipped with a warning, and the newest intact one is used."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from cadence.checkpointing.files import (
    Checkpoint,
    checkpoint_files,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
)
from cadence.checkpointing.schema import fit_problem
from cadence.errors import CheckpointError

__all__ = ["Resume", "check_fit", "find_checkpoint"]

log = logging.getLogger(__name__)

Resume = str | os.PathLike[str]
_EXAMPLE = "checkpoints/checkpoint-000012-epoch3-batch40.pt"


def check_fit(checkpoint: Checkpoint) -> None:
    """Refuse a checkpoint that lacks a part of a fit a resume uses, or holds one of another
    shape (``cadence.checkpointing.schema.fit_problem``).

    Raises:
        CheckpointError: naming the file and what is missing or malformed.
    """
    problem = fit_problem(checkpoint.meta, checkpoint.state)
    if problem is not None:
        raise CheckpointError(
            f"{checkpoint.path} is not a checkpoint of a fit: {problem}. Resume from a checkpoint a "
            f"Checkpointer wrote; fit(..., resume=\"latest\") falls back to the newest intact one."
        )


def find_checkpoint(resume: Resume, saver_folder: Path | None) -> Checkpoint | None:
    """The checkpoint ``resume`` names, checked with ``check_fit``; None for ``"latest"`` in a
    folder that has no checkpoint yet.

    Raises:
        CheckpointError: no Checkpointer for ``"latest"``, a path that does not exist, a folder
            without (intact) checkpoints, or a checkpoint that is not whole.
        TypeError: ``resume`` is neither ``"latest"`` nor a path.
    """
    if isinstance(resume, str) and resume == "latest":
        if saver_folder is None:
            raise CheckpointError(
                'fit(resume="latest") looks in the Checkpointer\'s folder, but this learner has no '
                'Checkpointer. Add one, e.g. callbacks=[Checkpointer("checkpoints")], or pass the '
                f'path of a checkpoint: fit(..., resume="{_EXAMPLE}").'
            )
        found = latest_checkpoint(saver_folder, check=check_fit)
        if found is None:  # a warning: a resume that finds nothing must not pass unseen
            log.warning('No checkpoint in %s yet: fit(resume="latest") starts from the beginning.', saver_folder)
        return found
    if not isinstance(resume, (str, os.PathLike)):
        raise TypeError(
            f'fit(resume=...) expects "latest", a checkpoint\'s path or a folder of checkpoints; '
            f'got {type(resume).__name__}. Pass e.g. resume="latest" (with a Checkpointer), '
            f'resume="checkpoints" or resume="{_EXAMPLE}".'
        )
    path = Path(resume)
    if path.is_dir():
        found = latest_checkpoint(path, check=check_fit)
        if found is None:
            raise CheckpointError(
                f"fit(resume={str(resume)!r}): the folder has no checkpoint. Pass the folder a "
                f"Checkpointer saved to, or leave out resume= to start from the beginning."
            )
        return found
    if not any(p.exists() or p.is_symlink() for p in (path, *checkpoint_files(path))):
        raise CheckpointError(_no_such_path(resume, path))
    checkpoint = load_checkpoint(path)
    check_fit(checkpoint)
    return checkpoint


def _no_such_path(resume: Resume, path: Path) -> str:
    message = (
        f"fit(resume={str(resume)!r}): there is no such file or folder. Pass a checkpoint's .pt "
        f"file, e.g. resume=\"{_EXAMPLE}\", a folder of checkpoints (its newest intact one is "
        f"used), or resume=\"latest\" with a Checkpointer; leave out resume= to start from the "
        f"beginning."
    )
    folder = path.parent
    found = list_checkpoints(folder) if folder.is_dir() else []
    if found:
        message += f" {folder} has {len(found)} checkpoint(s); the newest is {found[-1].name}."
    return message
