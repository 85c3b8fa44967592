"""Reading checkpoint files: list a folder's checkpoints, load one, find the newest intact one.

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
    check_plain,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_tensors,
    sequence_of,
    write_checkpoint,
)

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "check_plain",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_tensors",
    "sequence_of",
    "write_checkpoint",
]
