"""Checkpoint files: atomic writes, loading that never runs code, RNG states, and finding the
newest intact checkpoint.

A checkpoint is two files in one folder, written in this order:

- ``NAME.pt``: the tensors and plain data (model, optimizer, callback states, RNG states),
  written with ``torch.save``;
- ``NAME.json``: the metadata (format, position, callbacks, monitored value, and the size and
  SHA-256 of ``NAME.pt``). It is written last, so it is what commits the checkpoint.

Each file is written to a temporary file in the same folder, flushed and ``fsync``-ed, then
renamed over its final name, and the folder is ``fsync``-ed: a crash at any moment leaves the
previous checkpoints intact and readable. Loading checks the size and hash, then reads the
tensors with ``torch.load(weights_only=True)``, which refuses anything but tensors and plain
data, so a crafted file cannot run code; the metadata is JSON.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch

from cadence.errors import CheckpointError

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

log = logging.getLogger(__name__)

FORMAT = "cadence-checkpoint"
VERSION = 1
_NAME = re.compile(r"^checkpoint-(\d+)(-|\.)")
_REFUSED = re.compile(r"GLOBAL (\S+)")
_USE_ANOTHER = 'Use another checkpoint, e.g. fit(..., resume="latest") falls back to the newest intact one.'

StrPath = str | os.PathLike[str]


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint.

    Attributes:
        path: Its ``.pt`` file.
        meta: The JSON metadata: ``position`` (``epoch``, ``batch``, ``step``), ``created``,
            ``callbacks`` (label -> class), ``monitor`` and ``value``, ``bytes``, ``sha256``.
        state: What was saved: ``model``, ``optimizer``, ``callbacks``, ``cbstate``,
            ``extra`` and ``rng``.
    """

    path: Path
    meta: dict[str, Any]
    state: dict[str, Any]

    @property
    def sequence(self) -> int:
        """The checkpoint's number in its folder (later checkpoints have larger numbers)."""
        return sequence_of(self.path)


def sequence_of(path: Path) -> int:
    """The number in a checkpoint's file name (``checkpoint-000012-...`` is 12), or -1."""
    match = _NAME.match(path.name)
    return int(match.group(1)) if match else -1


# ---- writing -------------------------------------------------------------------------------


class _HashingWriter:
    """A write-only stream that hashes and counts what goes through it to ``file``."""

    def __init__(self, file: IO[bytes]) -> None:
        self.file, self.sha256, self.size = file, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()


def _write_atomic(final: Path, write: Callable[[_HashingWriter], object]) -> tuple[int, str]:
    temporary = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as file:
            writer = _HashingWriter(file)
            write(writer)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, final)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return writer.size, writer.sha256.hexdigest()


def _fsync_folder(folder: Path) -> None:
    if os.name == "posix":  # elsewhere a folder cannot be opened for fsync
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def write_checkpoint(folder: StrPath, name: str, state: Mapping[str, Any], meta: Mapping[str, Any]) -> Path:
    """Write ``state`` to ``folder/name.pt`` and ``meta`` to ``folder/name.json``, atomically.

    Returns:
        The path of the ``.pt`` file.

    Example:
        >>> import tempfile, torch
        >>> folder = tempfile.mkdtemp()
        >>> path = write_checkpoint(folder, "checkpoint-000001", {"w": torch.ones(2)}, {"note": "hi"})
        >>> loaded = load_checkpoint(path)
        >>> loaded.state["w"], loaded.meta["note"], loaded.sequence
        (tensor([1., 1.]), 'hi', 1)
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = folder / f"{name}.pt"

    def save(stream: _HashingWriter) -> None:
        # torch.save writes sequentially to any object with write(): hash while writing.
        torch.save(dict(state), stream)  # type: ignore[arg-type]

    size, digest = _write_atomic(tensors, save)
    record = {**meta, "format": FORMAT, "version": VERSION, "bytes": size, "sha256": digest}
    text = json.dumps(record, indent=1).encode()
    _write_atomic(folder / f"{name}.json", lambda stream: stream.write(text))
    _fsync_folder(folder)
    return tensors


# ---- reading -------------------------------------------------------------------------------


def _files(path: StrPath) -> tuple[Path, Path]:
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".pt", ".json") else path
    return stem.with_name(stem.name + ".pt"), stem.with_name(stem.name + ".json")


def _read_meta(meta_file: Path, tensors: Path) -> dict[str, Any]:
    if not meta_file.is_file():
        raise CheckpointError(
            f"{tensors} is not a committed cadence checkpoint: {meta_file.name} is missing (a crash "
            f"between writing the two files leaves this). {_USE_ANOTHER}"
        )
    try:
        meta = json.loads(meta_file.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{meta_file} is corrupt ({error}). {_USE_ANOTHER}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{meta_file} is not cadence checkpoint metadata (no \"format\": \"{FORMAT}\"). Pass a "
            f"checkpoint a Checkpointer wrote (its .pt or .json file). {_USE_ANOTHER}"
        )
    if not isinstance(meta.get("version"), int) or meta["version"] > VERSION:
        raise CheckpointError(
            f"{meta_file} has format version {meta.get('version')!r}; this cadence reads version "
            f"{VERSION} and older. Upgrade cadence to load it."
        )
    return meta


def _verify(tensors: Path, meta: Mapping[str, Any]) -> None:
    if not tensors.is_file():
        raise CheckpointError(
            f"{tensors} is missing; its metadata file exists but the checkpoint is incomplete. "
            f"{_USE_ANOTHER}"
        )
    size = tensors.stat().st_size
    if size != meta.get("bytes"):
        raise CheckpointError(
            f"{tensors} is truncated or corrupt: it has {size} bytes, its metadata says "
            f"{meta.get('bytes')}. {_USE_ANOTHER}"
        )
    with open(tensors, "rb") as file:
        digest = hashlib.file_digest(file, "sha256").hexdigest()
    if digest != meta.get("sha256"):
        raise CheckpointError(
            f"{tensors} is corrupt: its SHA-256 does not match its metadata. {_USE_ANOTHER}"
        )


def load_tensors(path: StrPath) -> Any:
    """``torch.load(path, weights_only=True)`` onto the CPU, with errors that name the file.

    Raises:
        CheckpointError: when the file holds anything but tensors and plain data (it is refused
            and nothing in it runs), or cannot be read.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols it then refuses
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = _REFUSED.search(str(error))
        what = f" ({found.group(1)})" if found else ""
        raise CheckpointError(
            f"Refused to load {path}: it contains a Python object{what} that is not a tensor or "
            f"plain data. cadence loads checkpoints with torch.load(weights_only=True) and never "
            f"unpickles arbitrary objects, so nothing in the file ran. Only load checkpoints written "
            f"by cadence; a state_dict() must hold tensors, numbers, strings, lists and dicts."
        ) from None
    except Exception as error:
        lines = str(error).strip().splitlines()
        problem = f"{type(error).__name__}: {lines[0].rstrip('.')}" if lines else type(error).__name__
        raise CheckpointError(f"{path} is corrupt or not a checkpoint: {problem}. {_USE_ANOTHER}") from None


def load_checkpoint(path: StrPath) -> Checkpoint:
    """Load the checkpoint at ``path`` (its ``.pt`` or ``.json`` file, or the name without
    suffix), checking that it is complete and intact.

    Raises:
        CheckpointError: naming the file, when it is missing, truncated, corrupt, from a newer
            cadence, or holds anything but tensors and plain data.
    """
    tensors, meta_file = _files(path)
    meta = _read_meta(meta_file, tensors)
    _verify(tensors, meta)
    state = load_tensors(tensors)
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{tensors} holds a {type(state).__name__}, not a checkpoint's dict: it was not written "
            f"by a Checkpointer. {_USE_ANOTHER}"
        )
    return Checkpoint(tensors, meta, state)


def list_checkpoints(folder: StrPath) -> list[Path]:
    """The committed checkpoints in ``folder`` (their ``.pt`` paths), oldest first.

    A checkpoint is committed once its ``.json`` file exists; intact or not is checked on load.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [p.with_suffix(".pt") for p in folder.glob("checkpoint-*.json") if _NAME.match(p.name)]
    return sorted(found, key=sequence_of)


def latest_checkpoint(folder: StrPath) -> Checkpoint | None:
    """The newest intact checkpoint in ``folder``, or None when it has none.

    Checkpoints that fail to load are skipped, newest first, with a warning that names each
    one and says which checkpoint is used instead.

    Raises:
        CheckpointError: when there are checkpoints but none is intact.
    """
    failures: list[str] = []
    for path in reversed(list_checkpoints(folder)):
        try:
            checkpoint = load_checkpoint(path)
        except CheckpointError as error:
            log.warning("Skipping checkpoint %s: %s", path, error)
            failures.append(str(error))
            continue
        if failures:
            log.warning("Resuming from %s, the newest intact checkpoint in %s.", path, folder)
        return checkpoint
    if failures:
        raise CheckpointError(
            f"No intact checkpoint in {folder}:\n" + "\n".join(f"  - {f}" for f in failures)
            + "\nStart over without resume=..., or restore the folder from a backup."
        )
    return None


# ---- what may be saved ---------------------------------------------------------------------

# Exact types: subclasses such as numpy.float64 or an IntEnum pickle as their own class.
_PLAIN = frozenset({type(None), bool, int, float, str})


def check_plain(value: object, where: str, _at: str = "") -> None:
    """Check that ``value`` holds only what ``torch.load(weights_only=True)`` reads back:
    tensors, None, bools, ints, floats, strings, and lists, tuples and dicts of those (dict
    keys: strings or ints).

    Raises:
        CheckpointError: naming ``where`` and the position of the first offending value.

    Example:
        >>> check_plain({"best": 0.5, "counts": [1, 2]}, "EarlyStopping.state_dict()")
        >>> import numpy as np
        >>> check_plain({"best": np.float64(0.5)}, "EarlyStopping.state_dict()")
        Traceback (most recent call last):
        ...
        cadence.errors.CheckpointError: EarlyStopping.state_dict() holds a numpy.float64 at ['best']; ...
    """
    if type(value) in _PLAIN or isinstance(value, torch.Tensor):
        return
    if isinstance(value, (list, tuple)) and type(value) in (list, tuple):
        for index, item in enumerate(value):
            check_plain(item, where, f"{_at}[{index}]")
        return
    if isinstance(value, dict) and type(value) in (dict, OrderedDict):
        for key, item in value.items():
            if type(key) not in (str, int):
                _refuse(key, where, f"{_at} (a key)")
            check_plain(item, where, f"{_at}[{key!r}]")
        return
    _refuse(value, where, _at)


def _refuse(value: object, where: str, at: str) -> None:
    kind = type(value)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    raise CheckpointError(
        f"{where} holds a {name}{f' at {at}' if at else ''}; checkpoints hold tensors, numbers, "
        f"strings, bools, None, lists, tuples and dicts only, so that loading never runs code. "
        f"Convert it, e.g. float(value), value.tolist() or torch.as_tensor(value)."
    )
