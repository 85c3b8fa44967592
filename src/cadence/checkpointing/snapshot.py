"""What a checkpoint holds of a learner, and whether it fits a learner: the model, the
optimizer, every callback's ``state_dict()``, the ``cbstate`` entries and the ``extra``
objects (putting them back: ``cadence.checkpointing.restore``).

Callback states are saved by label (``"Recorder"``, ``"Printer#2"``) and restored to the
callback of the same class and occurrence (``matching``). ``cbstate`` entries that are plain
data are saved as they are, entries with ``state_dict()``/``load_state_dict()`` through those;
any other entry must be saved by the callbacks that write it, in their own ``state_dict()``.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from cadence.access import parse_state_access
from cadence.callback import Callback, callback_labels
from cadence.checkpointing.files import Checkpoint, CheckpointError
from cadence.checkpointing.plain import check_plain
from cadence.graph.placement import runs_here

__all__ = ["capture_state", "check_fits", "check_model", "check_optimizer", "matching"]

log = logging.getLogger(__name__)


def _qualname(obj: object) -> str:
    kind = type(obj)
    return f"{kind.__module__}.{kind.__qualname__}"


def capture_state(learner: Any, extra: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The learner's state as ``(state, meta)``: tensors and plain data, checked to be
    loadable with ``torch.load(weights_only=True)``.

    Raises:
        CheckpointError: a callback's, an ``extra`` object's or a ``cbstate`` entry's state holds
            something else; the message names it.
    """
    callbacks = list(learner.callbacks)
    labels = callback_labels(callbacks)
    states = {}
    for label, callback in zip(labels, callbacks):
        # A rank-zero callback's state is rank 0's (the only rank that writes checkpoints).
        states[label] = callback.state_dict() if runs_here(learner, callback) else {}
        if not isinstance(states[label], dict):
            kind = type(states[label]).__name__
            raise CheckpointError(
                f"{label}.state_dict() returned a {kind}; return a dict, e.g. "
                f"{{\"count\": self.count}}, or {{}} when it keeps no state."
            )
        check_plain(states[label], f"{label}.state_dict()")
    saved_extra = {}
    for name, obj in extra.items():
        saved_extra[name] = obj.state_dict()
        check_plain(saved_extra[name], f"Checkpointer(extra={{{name!r}: ...}}).state_dict()")
    state = {
        "model": learner.model.state_dict(),
        "optimizer": learner.optimizer.state_dict(),
        "callbacks": states,
        "cbstate": _capture_cbstate(learner.cbstate, callbacks, labels),
        "extra": saved_extra,
    }
    meta = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": _qualname(learner.model),
        "optimizer": _qualname(learner.optimizer),
        "callbacks": {label: _qualname(cb) for label, cb in zip(labels, callbacks)},
    }
    return state, meta


def check_fits(checkpoint: Checkpoint, learner: Any, extra: Mapping[str, Any]) -> None:
    """Check, before anything runs, that ``checkpoint`` can be restored into ``learner``.

    Raises:
        CheckpointError: another model or optimizer, state of a callback the learner lacks, a
            ``cbstate`` entry the learner lacks or holds as another kind of value, or other
            ``extra`` objects; the message names the file and the fix.
    """
    path, meta, state = checkpoint.path, checkpoint.meta, checkpoint.state
    _check_model(path, state["model"], learner.model)
    check_optimizer(checkpoint, learner.optimizer)
    _check_callbacks(path, checkpoint, list(learner.callbacks))
    _check_cbstate(checkpoint, learner.cbstate)
    if set(state["extra"]) != set(extra):
        raise CheckpointError(
            f"{path} holds extra states {sorted(state['extra'])}, but the Checkpointer's extra has "
            f"{sorted(extra)}. Pass the same objects: Checkpointer(..., extra={{name: obj}})."
        )


def check_optimizer(checkpoint: Checkpoint, optimizer: Any) -> None:
    """Check that ``checkpoint``'s optimizer state can be loaded into ``optimizer``.

    Raises:
        CheckpointError: another optimizer class, or other parameter groups.
    """
    path, meta, state = checkpoint.path, checkpoint.meta, checkpoint.state
    if meta["optimizer"] != _qualname(optimizer):
        raise CheckpointError(
            f"{path} holds the state of a {meta['optimizer']}, but the learner's optimizer is a "
            f"{_qualname(optimizer)}. Build the learner with the same optimizer."
        )
    saved_groups = [len(g.get("params", ())) for g in state["optimizer"].get("param_groups", ())]
    groups = [len(g["params"]) for g in optimizer.param_groups]
    if saved_groups != groups:
        raise CheckpointError(
            f"{path} holds an optimizer over parameter groups of sizes {saved_groups}, but the "
            f"learner's has {groups}. Build the optimizer over the same parameters, in the same groups."
        )


def check_model(checkpoint: Checkpoint, model: Any) -> None:
    """Check that ``checkpoint``'s model state fits ``model`` (same keys and shapes).

    Raises:
        CheckpointError: naming the missing, unexpected and reshaped entries.
    """
    _check_model(checkpoint.path, checkpoint.state["model"], model)


def _writers(name: str, callbacks: list[Callback], labels: list[str]) -> list[tuple[str, Callback]]:
    found = []
    for label, callback in zip(labels, callbacks):
        paths = parse_state_access(label, callback.state_access).writes
        if any(p[0] == "cbstate" and (len(p) == 1 or p[1] == name) for p in paths):
            found.append((label, callback))
    return found


def _capture_cbstate(cbstate: Any, callbacks: list[Callback], labels: list[str]) -> dict[str, Any]:
    """Plain-data entries as they are, entries with ``state_dict()`` through it; any other entry
    must be saved by the callbacks that write it, in their own ``state_dict``."""
    plain: dict[str, Any] = {}
    objects: dict[str, Any] = {}
    for name, value in cbstate.entries().items():
        if _restorable(value):
            objects[name] = value.state_dict()
            check_plain(objects[name], f"cbstate.{name}.state_dict()")
            continue
        try:
            check_plain(value, f"cbstate.{name}")
        except CheckpointError:
            writers = _writers(name, callbacks, labels)
            if writers and all(type(cb).state_dict is not Callback.state_dict for _, cb in writers):
                continue  # its writers save it
            who = ", ".join(label for label, _ in writers) or "the callback that writes it"
            raise CheckpointError(
                f"cbstate.{name} holds a {type(value).__name__}, which a checkpoint cannot save as "
                f"is, and {who} does not implement state_dict(). Save the entry in that callback's "
                f"state_dict() and restore it in load_state_dict(), or give "
                f"{type(value).__name__} state_dict() and load_state_dict() methods."
            ) from None
        plain[name] = value
    return {"plain": plain, "objects": objects}


def _restorable(value: object) -> bool:
    """Whether a ``cbstate`` entry is saved through its own ``state_dict``."""
    return callable(getattr(value, "state_dict", None)) and callable(getattr(value, "load_state_dict", None))


def _check_cbstate(checkpoint: Checkpoint, cbstate: Any) -> None:
    path, saved = checkpoint.path, checkpoint.state["cbstate"]
    taken = f"the checkpoint was taken with {', '.join(checkpoint.meta['callbacks']) or 'no callbacks'}"
    for name in saved["objects"]:
        if name not in cbstate:
            raise CheckpointError(
                f"{path} holds cbstate.{name}, but this learner has no such entry; add the callback "
                f"that creates it in its init() ({taken})."
            )
        if not _restorable(getattr(cbstate, name)):
            raise CheckpointError(
                f"{path} holds cbstate.{name} as the state of an object, but this learner's "
                f"cbstate.{name} is a {type(getattr(cbstate, name)).__name__} without load_state_dict(); "
                f"build the learner with the callbacks that create it as the checkpoint's run did ({taken})."
            )
    for name in saved["plain"]:
        if name in cbstate and _restorable(getattr(cbstate, name)):
            raise CheckpointError(
                f"{path} holds cbstate.{name} as plain data, but this learner's cbstate.{name} is a "
                f"{type(getattr(cbstate, name)).__name__}, restored with its load_state_dict(); build the "
                f"learner with the callbacks that create it as the checkpoint's run did ({taken})."
            )


def _check_model(path: Path, saved: dict[str, Any], model: Any) -> None:
    current = model.state_dict()
    missing = sorted(set(current) - set(saved))
    unexpected = sorted(set(saved) - set(current))
    common = set(saved) & set(current)
    untyped = sorted(
        k for k in common if isinstance(current[k], torch.Tensor) and not isinstance(saved[k], torch.Tensor)
    )
    reshaped = sorted(
        k for k in common
        if isinstance(saved[k], torch.Tensor) and tuple(saved[k].shape) != tuple(getattr(current[k], "shape", ()))
    )
    if missing or unexpected or untyped or reshaped:
        found = (
            ("missing", missing), ("unexpected", unexpected), ("not a tensor", untyped), ("other shape", reshaped)
        )
        parts = [f"{what}: {', '.join(keys[:5])}{' ...' * (len(keys) > 5)}" for what, keys in found if keys]
        raise CheckpointError(
            f"{path} holds a different model ({_qualname(model)} here; {'; '.join(parts)}). Build the "
            f"learner with the model the checkpoint was taken from."
        )


def matching(checkpoint: Checkpoint, callbacks: list[Callback]) -> dict[str, Callback]:
    """Saved label -> the learner's callback of the same class and occurrence: a saved
    ``"Printer"`` matches the learner's ``"Printer#1"`` once a second printer joined."""
    labels = callback_labels(callbacks)
    current = {(_qualname(cb), _occurrence(label)): cb for label, cb in zip(labels, callbacks)}
    found = {}
    for label, kind in checkpoint.meta["callbacks"].items():
        callback = current.get((kind, _occurrence(label)))
        if callback is not None:
            found[label] = callback
    return found


def _occurrence(label: str) -> int:
    _, _, number = label.partition("#")
    return int(number) if number.isdecimal() else 1  # isdigit() takes "²", which int() refuses


def _check_callbacks(path: Path, checkpoint: Checkpoint, callbacks: list[Callback]) -> None:
    saved, states = checkpoint.meta["callbacks"], checkpoint.state["callbacks"]
    matched = matching(checkpoint, callbacks)
    labels = callback_labels(callbacks)
    for label, kind in saved.items():
        if label not in matched and states.get(label):
            raise CheckpointError(
                f"{path} holds the state of {label} ({kind}), which this learner lacks. Build the "
                f"learner with the callbacks the checkpoint was taken with ({', '.join(saved)}); "
                f"it has {', '.join(labels) or 'none'}."
            )
    restored = [id(cb) for cb in matched.values()]
    for label, callback in zip(labels, callbacks):
        if id(callback) not in restored and callback.state_dict():
            log.warning("%s has no state in %s: it starts afresh.", label, path)
