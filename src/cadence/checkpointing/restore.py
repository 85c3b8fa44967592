"""Putting a checkpoint's state back into a learner, in a way that fails early or leaves the
model and the optimizer as they were.

Before ``FitBegin`` of a resumed fit (``rehearse_restore``), every callback's, ``cbstate``
entry's and ``extra`` object's ``load_state_dict`` is called on a copy of that object with the
state the checkpoint holds for it. A state it refuses (another kind of ``Scheduler``, other
metrics, a ``KeyError`` from another version of a callback) then fails the resume before
anything runs, as a ``CheckpointError`` naming the file and the callback, instead of after
``FitBegin`` with the model and the optimizer already overwritten. A copy is a
``copy.deepcopy`` that shares, instead of copying, what the object refers to of the learner:
the learner itself, its model (with its parameters and buffers), optimizer (with its state),
loss function, executor and data. An object that cannot be copied (it holds a lock, an open
file, a CUDA tensor that does not fit twice) is not tried.

The restore itself (``restore_state``, after ``FitBegin``, or mid-epoch after ``EpochBegin``)
loads the ``cbstate`` entries, the callbacks and the ``extra`` objects first, then the
optimizer, then the model (whose keys and shapes ``check_fits`` checked): a ``load_state_dict``
that still fails is a ``CheckpointError`` naming the file and the part, with the model and the
optimizer as they were before the restore (the optimizer is put back when the model's own load
fails); what was restored before the failing part holds the checkpoint's state.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from cadence.callback import Callback
from cadence.checkpointing.files import Checkpoint, CheckpointError
from cadence.checkpointing.snapshot import matching
from cadence.graph.placement import runs_here

__all__ = ["refusal", "rehearse_restore", "restore_fix", "restore_state"]

log = logging.getLogger(__name__)


def restore_state(checkpoint: Checkpoint, learner: Any, extra: Mapping[str, Any]) -> None:
    """Put the learner's state back as ``checkpoint`` holds it (``check_fits`` first).

    The ``cbstate`` entries, the callbacks and the ``extra`` objects are restored first, then
    the optimizer, then the model, so that a ``load_state_dict`` that fails leaves the model and
    the optimizer as they were (the optimizer is put back when the model's own load fails).

    Raises:
        CheckpointError: a ``load_state_dict`` raised; the message names the file, the part
            (the callback, the entry, ...), what it raised and what was restored.
    """
    for name, value in checkpoint.state["cbstate"]["plain"].items():
        setattr(learner.cbstate, name, value)
    for who, obj, saved in _parts(checkpoint, learner, extra):
        kept = f"the model and the optimizer are as they were; what was restored before {who} holds the checkpoint's state"
        _load(checkpoint, who, obj, saved, kept)
    previous = learner.optimizer.state_dict()  # its tensors stay as they are: a load replaces them
    _load(checkpoint, "optimizer", learner.optimizer, checkpoint.state["optimizer"], "the model is as it was")
    try:
        kept = "the optimizer is put back as it was; the model may hold part of the checkpoint's weights"
        _load(checkpoint, "model", learner.model, checkpoint.state["model"], kept)
    except CheckpointError:
        learner.optimizer.load_state_dict(previous)
        raise


def _parts(checkpoint: Checkpoint, learner: Any, extra: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(who, object, its saved state)`` for every object a restore loads with
    ``load_state_dict`` but the model and the optimizer, in the order it loads them."""
    state = checkpoint.state
    found = [(f"cbstate.{name}", getattr(learner.cbstate, name), saved) for name, saved in state["cbstate"]["objects"].items()]
    for label, callback in matching(checkpoint, list(learner.callbacks)).items():
        if label in state["callbacks"] and runs_here(learner, callback):  # rank-zero ones: on rank 0
            found.append((label, callback, state["callbacks"][label]))
    found += [(f"Checkpointer(extra={{{name!r}: ...}})", obj, state["extra"][name]) for name, obj in extra.items()]
    return found


def _load(checkpoint: Checkpoint, who: str, obj: Any, saved: Any, kept: str) -> None:
    try:
        obj.load_state_dict(saved)
    except Exception as error:
        raise CheckpointError(
            f"Restoring {checkpoint.path} failed: {who}.load_state_dict raised {refusal(error)}. This fit "
            f"stops ({kept}). {restore_fix(checkpoint, who)}"
        ) from error


def refusal(error: BaseException) -> str:
    """``error`` in a few words, for a message: its type and its first line."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def restore_fix(checkpoint: Checkpoint, who: str) -> str:
    """The fix for a state that ``who`` (a callback's label, ``cbstate.<name>``, an
    ``extra`` object, ``model`` or ``optimizer``) could not load from ``checkpoint``."""
    saved = checkpoint.meta["callbacks"]
    if who in saved:
        fix = f"Build {who} as the run that saved the checkpoint did (a {saved[who]}, with the same arguments)"
    elif who.startswith("cbstate."):
        fix = (
            f"Build the learner with the callbacks the checkpoint was taken with "
            f"({', '.join(saved) or 'none'}), which create {who} in their init()"
        )
    elif who in ("model", "optimizer"):
        fix = "Build the learner with the model and the optimizer the checkpoint was taken with"
    else:
        fix = f"Pass the kind of object that was saved, built the same way, as {who}"
    return f"{fix}, or leave out resume= to start from the beginning."


def rehearse_restore(checkpoint: Checkpoint, learner: Any, extra: Mapping[str, Any], data: Iterable[object]) -> None:
    """Load each state ``checkpoint`` holds for a callback, a ``cbstate`` entry or an ``extra``
    object into a copy of that object (``check_fits`` first); ``data`` is shared, with the
    learner's.

    Raises:
        CheckpointError: a ``load_state_dict`` refused its state; the message names the file,
            the callback (or entry, or ``extra`` key), what it raised and the fix.
    """
    shared = _shared(learner, data)
    for who, obj, saved in _parts(checkpoint, learner, extra):
        _try(checkpoint, who, obj, saved, shared)


def _shared(learner: Any, data: Iterable[object]) -> dict[int, object]:
    """What the copies share: ``copy.deepcopy``'s memo, by id."""
    model, optimizer = learner.model, learner.optimizer
    found: list[object] = [learner, model, optimizer, learner.loss_fn, learner.executor, *data]
    found += [*model.parameters(), *model.buffers(), *optimizer.param_groups]
    found += [value for values in optimizer.state.values() for value in values.values()]
    if learner.data is not None:
        found += [learner.data, *learner.data]
    return {id(obj): obj for obj in found}


def _try(checkpoint: Checkpoint, who: str, obj: Any, saved: Any, shared: dict[int, object]) -> None:
    if type(obj).load_state_dict is Callback.load_state_dict:
        copied = obj  # the default changes nothing: it refuses any state but {}
    else:
        try:
            copied = copy.deepcopy(obj, dict(shared))  # a memo of its own: deepcopy adds to it
        except Exception as error:  # cannot be copied: its restore is checked as it happens
            log.debug("%s was not tried on a copy, as it cannot be copied (%s).", who, refusal(error))
            return
    try:
        copied.load_state_dict(_tree(saved))
    except Exception as error:
        raise CheckpointError(
            f"{checkpoint.path}: {who}.load_state_dict refuses the state the checkpoint holds for it "
            f"({refusal(error)}), tried before anything was restored. "
            f"{restore_fix(checkpoint, who)}"
        ) from error


def _tree(value: Any) -> Any:
    """``value`` with its dicts, lists and tuples copied and its tensors shared, so that a
    ``load_state_dict`` that pops or rebinds entries leaves the checkpoint's state whole."""
    if isinstance(value, dict):
        return {key: _tree(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_tree(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_tree(item) for item in value)
    return value
