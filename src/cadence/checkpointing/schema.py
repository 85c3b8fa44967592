"""The shape a checkpoint must have before any of it is used: its metadata right after the
JSON is parsed, and a fit's tensors right after ``torch.load``.

A side file edited by hand (a dict where a string belongs, nesting thousands of levels deep, a
megabyte of labels) or a forged tensor file must end as a ``CheckpointError`` that names the
file, before anything reads a field, never as a ``TypeError`` or ``RecursionError`` from deep
inside a restore. Each check returns what is wrong, as a phrase, or None; the callers (reading
and writing in ``cadence.checkpointing.files``, resuming in ``cadence.checkpointing.resume``)
turn it into their error.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeGuard

import torch

from cadence.checkpointing.rng import rng_problem
from cadence.errors import CheckpointError
from cadence.state import CallbackState

__all__ = [
    "FORMAT",
    "MAX_META_BYTES",
    "MAX_META_DEPTH",
    "VERSION",
    "fit_problem",
    "meta_problem",
    "parse_meta",
    "writable_problem",
]

FORMAT = "cadence-checkpoint"
VERSION = 1

MAX_META_BYTES = 1 << 20  # cadence writes a few KiB; a bigger file is not its own
MAX_META_DEPTH = 16  # cadence writes 2 levels; users' own fields get room, not thousands
_LARGEST = 2**63 - 1  # what a torch int64 holds
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def parse_meta(text: bytes, where: Path, use_another: str) -> dict[str, Any]:
    """Parse a checkpoint's JSON metadata and check its shape: the one place where a side
    file is judged before any field of it is used.

    Raises:
        CheckpointError: naming ``where``: too large, nested too deep, not JSON, not cadence's,
            from a newer cadence, or a field of the wrong type (``meta_problem``).
    """
    if len(text) > MAX_META_BYTES:
        raise CheckpointError(
            f"{where} is larger than {MAX_META_BYTES} bytes, which no cadence checkpoint's metadata "
            f"is; it was not read. {use_another}"
        )
    try:
        meta = json.loads(text)
    except RecursionError:  # json's parser recurses per level: thousands of [[[[ end here
        raise CheckpointError(
            f"{where} is malformed: it nests deeper than JSON can be read (cadence writes 2 levels). "
            f"{use_another}"
        ) from None
    except (ValueError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{where} is corrupt ({error}). {use_another}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{where} is not cadence checkpoint metadata (no \"format\": \"{FORMAT}\"). Pass a "
            f"checkpoint a Checkpointer wrote (its .pt or .json file). {use_another}"
        )
    version = meta.get("version")
    if type(version) is not int or version > VERSION:
        raise CheckpointError(
            f"{where} has format version {version!r}; this cadence reads version {VERSION} and "
            f"older. Upgrade cadence to load it."
        )
    problem = meta_problem(meta)
    if problem is not None:
        raise CheckpointError(f"{where} is malformed: {problem}. {use_another}")
    return meta


def _depth(value: object) -> int:
    """How deep ``value`` (parsed JSON) nests; iterative, so any depth is measured safely."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        if deepest > MAX_META_DEPTH:
            break
        stack.extend((child, level + 1) for child in children)
    return deepest


def _count(value: object) -> bool:
    return type(value) is int and 0 <= value <= _LARGEST


def _shown(value: object) -> str:
    """A parsed JSON value as the file has it, cut short."""
    text = json.dumps(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


_Check = tuple[Callable[[object], bool], str]
# The fields cadence writes and reads, by what each must hold when present.
_FIELDS: dict[str, _Check] = {
    "bytes": (_count, "a byte count"),
    "sha256": (lambda v: isinstance(v, str) and _HEX64.match(v) is not None, "64 hex digits"),
    "position": (
        lambda v: isinstance(v, dict) and all(_count(v.get(k)) for k in ("epoch", "batch", "step")),
        'an object of counts, {"epoch": ..., "batch": ..., "step": ...}',
    ),
    "n_epochs": (_count, "a count"),
    "callbacks": (
        lambda v: isinstance(v, dict) and all(isinstance(c, str) for c in v.values()),
        "an object of callback label -> class name",
    ),
    "created": (lambda v: isinstance(v, str), "a string"),
    "model": (lambda v: isinstance(v, str), "a class name"),
    "optimizer": (lambda v: isinstance(v, str), "a class name"),
    "monitor": (lambda v: isinstance(v, str), "a metric name"),
    "mode": (lambda v: v in ("min", "max"), '"min" or "max"'),
    "value": (lambda v: v is None or type(v) in (int, float), "a number or null"),
    "reason": (lambda v: isinstance(v, str), "a string"),
    "run": (lambda v: isinstance(v, str), "a run id (a string)"),
}


def meta_problem(meta: Mapping[str, Any]) -> str | None:
    """What is wrong with the fields of a checkpoint's metadata, or None: how deep it nests,
    ``bytes`` and ``sha256`` present, and each field cadence uses of the type it uses.
    Fields cadence does not know are left alone (``write_checkpoint`` takes any).

    Example:
        >>> meta_problem({"bytes": 10, "sha256": "0" * 64, "callbacks": {"Recorder": {}}})
        '"callbacks" is {"Recorder": {}}, expected an object of callback label -> class name'
        >>> meta_problem({"bytes": 10, "sha256": "0" * 64, "position": {"epoch": 1, "batch": 0, "step": 4}})
    """
    if _depth(meta) > MAX_META_DEPTH:
        return f"it nests more than {MAX_META_DEPTH} levels deep (cadence writes 2)"
    for name, (valid, expected) in _FIELDS.items():
        if name in meta and not valid(meta[name]):
            return f'"{name}" is {_shown(meta[name])}, expected {expected}'
    missing = [f'"{name}"' for name in ("bytes", "sha256") if name not in meta]
    return f"{' and '.join(missing)} missing" if missing else None


def writable_problem(meta: Mapping[str, Any]) -> str | None:
    """What would make ``meta`` metadata that loading refuses (``meta_problem``, not JSON, or
    too large), or None: ``write_checkpoint`` checks it before it writes anything."""
    problem = meta_problem(meta)
    if problem is not None:
        return problem
    try:
        size = len(json.dumps(meta, indent=1).encode())
    except (TypeError, ValueError) as error:  # not JSON data, or a cycle
        return f"it is not JSON data ({error})"
    if size > MAX_META_BYTES - 100:  # room for the real size and hash
        return f"it has {size} bytes, more than the {MAX_META_BYTES} a checkpoint's metadata may have"
    return None


# ---- a fit's checkpoint ------------------------------------------------------------------------


def fit_problem(meta: Mapping[str, Any], state: Mapping[str, Any]) -> str | None:
    """What keeps a loaded checkpoint from being a checkpoint of a fit, or None: the parts
    ``Checkpointer`` writes, each of the type a resume uses (``meta`` passed ``meta_problem``).

    Example:
        >>> fit_problem({"position": {"epoch": 0, "batch": 0, "step": 0}}, {})
        'optimizer class, callback classes, model, optimizer, callbacks, cbstate, extra, rng missing or malformed'
    """
    position = meta.get("position")
    parts = {
        "position": position is not None,
        "optimizer class": "optimizer" in meta,
        "callback classes": "callbacks" in meta,
        "model": _str_keys(state.get("model")),
        "optimizer": _optimizer_ok(state.get("optimizer")),
        "callbacks": _str_keys(state.get("callbacks"), dict),
        "cbstate": isinstance(state.get("cbstate"), dict)
        and _entries(state["cbstate"].get("plain"))
        and _entries(state["cbstate"].get("objects"), dict),
        "extra": _str_keys(state.get("extra")),
        "rng": isinstance(state.get("rng"), dict),
    }
    broken = [name for name, ok in parts.items() if not ok]
    if broken:
        return f"{', '.join(broken)} missing or malformed"
    rng = state["rng"]
    problem = rng_problem(rng.get("now"))
    if problem is None and isinstance(position, dict) and position["batch"] > 0:
        # A mid-epoch checkpoint also holds the RNGs from when the epoch's iterator began.
        problem = rng_problem(rng.get("epoch"))
        samplers = rng.get("samplers", {})
        if problem is None and not (_str_keys(samplers) and all(_count(e) for e in samplers.values())):
            problem = "the samplers' epochs are not a dict of counts"
    return None if problem is None else f"its RNG state is malformed ({problem})"


def _str_keys(value: object, values: type | None = None) -> TypeGuard[dict[str, Any]]:
    return isinstance(value, dict) and all(
        isinstance(k, str) and (values is None or isinstance(v, values)) for k, v in value.items()
    )


def _entries(value: object, values: type | None = None) -> bool:
    """cbstate entries by name: names a restore may set on ``learner.cbstate``."""
    if not _str_keys(value, values):
        return False
    return all(k.isidentifier() and not k.startswith("_") and not hasattr(CallbackState, k) for k in value)


def _optimizer_ok(value: object) -> bool:
    """``optimizer.state_dict()``'s shape: per-parameter ``state`` keyed by int, and
    ``param_groups``, each a dict with ``params``, a list of ints."""
    if not isinstance(value, dict) or not isinstance(value.get("state"), dict):
        return False
    groups = value.get("param_groups")
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        return False
    ids = [i for g in groups for i in (g.get("params") if isinstance(g.get("params"), list) else [None])]
    if not all(type(i) is int for i in ids) or len(set(ids)) != len(ids):
        return False
    known = set(ids)
    return all(k in known and isinstance(v, dict) for k, v in value["state"].items())
