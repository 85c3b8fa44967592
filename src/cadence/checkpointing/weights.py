"""Loading a checkpoint's model (and optionally optimizer) into a learner, outside ``fit``:
``learner.load(path)``, e.g. with ``Checkpointer.best_path``. Nothing else in the checkpoint
is used (to continue the run it belongs to, ``fit(n_epochs, resume=path)``), and, as for every
checkpoint, loading reads tensors and plain data only, so nothing in the file runs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cadence.checkpointing.files import Checkpoint, CheckpointError, load_checkpoint
from cadence.checkpointing.snapshot import check_model, check_optimizer

__all__ = ["load_weights"]


def load_weights(learner: Any, path: str | os.PathLike[str], *, optimizer: bool = False) -> Checkpoint:
    """Put the model state of the checkpoint at ``path`` into ``learner.model`` (on the
    model's device), and with ``optimizer=True`` its optimizer state into
    ``learner.optimizer``; everything is checked before anything is loaded.

    Returns:
        The loaded checkpoint (its ``meta`` has the position and the monitored value).

    Raises:
        TypeError: ``path`` is not a path (``Checkpointer.best_path`` is None before a
            checkpoint with a monitored value exists).
        CheckpointError: the file is missing, corrupt or not a checkpoint of a fit, or holds
            another model or optimizer; the message names the file and the fix.

    Example:
        >>> import tempfile
        >>> from cadence import Checkpointer, Metrics
        >>> from cadence.testing import make_test_learner
        >>> checkpointer = Checkpointer(tempfile.mkdtemp(), keep_best=1)
        >>> learner = make_test_learner(checkpointer, Metrics(), n_batches=2)
        >>> _ = learner.fit(3)
        >>> loaded = load_weights(learner, checkpointer.best_path)
        >>> loaded.meta["value"] == min(learner.cbstate.metrics.epochs["valid/loss"])
        True
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            f"learner.load(path) expects a checkpoint's path, e.g. learner.load(checkpointer.best_path) "
            f'or learner.load("checkpoints/checkpoint-000003-epoch3-batch0.pt"); got {path!r}. '
            f"Checkpointer.best_path is None until a checkpoint with a value of its monitor is saved."
        )
    if Path(path).is_dir():
        raise CheckpointError(
            f"learner.load({str(path)!r}): that is a folder; pass one checkpoint in it, e.g. "
            f"learner.load(checkpointer.best_path) or learner.load(latest_checkpoint(folder).path) "
            f"(from cadence.checkpoint)."
        )
    checkpoint = load_checkpoint(path)
    state, meta = checkpoint.state, checkpoint.meta
    wanted = ["model"] + (["optimizer"] if optimizer else [])
    broken = [name for name in wanted if not isinstance(state.get(name), dict)]
    if optimizer and not isinstance(meta.get("optimizer"), str):
        broken.append("optimizer class")
    if broken:
        raise CheckpointError(
            f"{checkpoint.path} is not a checkpoint of a fit: {', '.join(broken)} missing or "
            f"malformed. Load a checkpoint a Checkpointer wrote."
        )
    check_model(checkpoint, learner.model)
    if optimizer:
        check_optimizer(checkpoint, learner.optimizer)
    learner.model.load_state_dict(state["model"])
    if optimizer:
        learner.optimizer.load_state_dict(state["optimizer"])
    return checkpoint
