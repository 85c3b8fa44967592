"""Reading checkpoint files: list a folder's checkpoints, load one, find the newest intact one,
and move an earlier run's checkpoints aside so that a fresh run can use the folder.

The files are written by ``Checkpointer``; the machinery lives in ``cadence.checkpointing``.

Example:
    >>> import tempfile
    >>> from cadence.checkpoint import latest_checkpoint, list_checkpoints
    >>> folder = tempfile.mkdtemp()
    >>> list_checkpoints(folder), latest_checkpoint(folder)
    ([], None)
"""

from cadence.checkpointing.files import (
    Checkpoint,
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_tensors,
    sequence_of,
    write_checkpoint,
)
from cadence.checkpointing.folder import archive_checkpoints
from cadence.checkpointing.plain import check_plain

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "archive_checkpoints",
    "check_plain",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_tensors",
    "sequence_of",
    "write_checkpoint",
]
