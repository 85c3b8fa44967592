"""Checkpoint files: atomic writes, loading that never runs code, RNG states, and finding the
newest intact checkpoint.

A checkpoint is two files in one folder, written in this order:

- ``NAME.pt``: the tensors and plain data (model, optimizer, callback states, RNG states),
  written with ``torch.save``;
- ``NAME.json``: the metadata (format, position, callbacks, monitored value, and the size and
  SHA-256 of ``NAME.pt``). It is written last, so it is what commits the checkpoint.

Each file is written to a temporary file in the same folder, flushed and ``fsync``-ed, then
renamed over its final name, and the folder is ``fsync``-ed: a crash at any moment leaves the
previous checkpoints intact and readable. Loading checks the metadata's shape
(``cadence.checkpointing.schema``), that neither file is a link to somewhere outside the
checkpoint's folder, and the size and hash, then reads the tensors with
``torch.load(weights_only=True)``, which refuses anything but tensors and plain data, so a
crafted file cannot run code; the metadata is JSON.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch

from cadence.checkpointing.plain import check_plain
from cadence.checkpointing.schema import FORMAT, MAX_META_BYTES, VERSION, parse_meta, writable_problem
from cadence.errors import CheckpointError

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "FolderScan",
    "check_plain",
    "checkpoint_files",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_tensors",
    "read_meta",
    "scan_folder",
    "sequence_of",
    "write_checkpoint",
]

log = logging.getLogger(__name__)

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
    temporary.unlink(missing_ok=True)  # a leftover of this pid; "x" below never follows a link
    try:
        with open(temporary, "xb") as file:
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

    record = {**meta, "format": FORMAT, "version": VERSION, "bytes": 0, "sha256": "0" * 64}
    _check_writable(record, folder / f"{name}.json")  # before any file is written
    size, digest = _write_atomic(tensors, save)
    record.update(bytes=size, sha256=digest)
    text = json.dumps(record, indent=1).encode()
    _write_atomic(folder / f"{name}.json", lambda stream: stream.write(text))
    _fsync_folder(folder)
    return tensors


def _check_writable(record: Mapping[str, Any], meta_file: Path) -> None:
    """Refuse metadata that loading would refuse, so that no checkpoint is written unreadable."""
    problem = writable_problem(record)
    if problem is not None:
        raise CheckpointError(
            f"Cannot write {meta_file}: its metadata is malformed: {problem}. Pass metadata of plain "
            f"JSON values; save anything large or nested in the state instead."
        )


# ---- reading -------------------------------------------------------------------------------


def checkpoint_files(path: StrPath) -> tuple[Path, Path]:
    """A checkpoint's ``(.pt, .json)`` paths from either of them or the name without suffix."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".pt", ".json") else path
    return stem.with_name(stem.name + ".pt"), stem.with_name(stem.name + ".json")


def _outside(path: Path) -> str | None:
    """Why ``path`` may not be read: it resolves (through symbolic links) outside the folder
    it is listed in. None when it does not, or does not exist."""
    folder = Path(os.path.realpath(path.parent))
    real = Path(os.path.realpath(path))
    if real.is_relative_to(folder):
        return None
    return (
        f"it is a symbolic link to {real}, outside the checkpoint's folder {folder}. cadence reads "
        f"only files inside the folder a checkpoint is in, so that a swapped link cannot make it "
        f"read another file. If you made the link, pass the file it points to instead; if not, "
        f"the folder was tampered with"
    )


def _refuse_outside(path: Path) -> Path:
    """``path`` resolved, after checking it stays inside its folder (read the result, so that
    the link is not followed again)."""
    why = _outside(path)
    if why is not None:
        raise CheckpointError(f"Refused to load {path}: {why}. {_USE_ANOTHER}")
    return Path(os.path.realpath(path))


def read_meta(meta_file: StrPath) -> dict[str, Any]:
    """Read and check a checkpoint's ``.json`` file (``cadence.checkpointing.schema``).

    Raises:
        CheckpointError: naming the file: missing, a link out of its folder, too large, not
            JSON, or malformed.
    """
    meta_file = Path(meta_file)
    real = _refuse_outside(meta_file)
    if not real.is_file():
        raise CheckpointError(
            f"{meta_file.with_suffix('.pt')} is not a committed cadence checkpoint: {meta_file.name} is "
            f"missing (a crash between writing the two files leaves this). {_USE_ANOTHER}"
        )
    try:
        with open(real, "rb") as file:
            text = file.read(MAX_META_BYTES + 1)  # bounded: a huge file is refused unread
    except OSError as error:
        raise CheckpointError(f"{meta_file} cannot be read ({error}). {_USE_ANOTHER}") from None
    return parse_meta(text, meta_file, _USE_ANOTHER)


def _verify(tensors: Path, real: Path, meta: Mapping[str, Any]) -> None:
    if not real.is_file():
        raise CheckpointError(
            f"{tensors} is missing; its metadata file exists but the checkpoint is incomplete. "
            f"{_USE_ANOTHER}"
        )
    size = real.stat().st_size
    if size != meta["bytes"]:
        raise CheckpointError(
            f"{tensors} is truncated or corrupt: it has {size} bytes, its metadata says "
            f"{meta['bytes']}. {_USE_ANOTHER}"
        )
    with open(real, "rb") as file:
        digest = hashlib.file_digest(file, "sha256").hexdigest()
    if digest != meta["sha256"]:
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
        CheckpointError: naming the file, when it is missing, truncated, corrupt, malformed,
            a link to a file outside its folder, from a newer cadence, or holds anything but
            tensors and plain data.
    """
    tensors, meta_file = checkpoint_files(path)
    meta = read_meta(meta_file)
    real = _refuse_outside(tensors)
    _verify(tensors, real, meta)
    state = load_tensors(real)
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{tensors} holds a {type(state).__name__}, not a checkpoint's dict: it was not written "
            f"by a Checkpointer. {_USE_ANOTHER}"
        )
    return Checkpoint(tensors, meta, state)


@dataclass(frozen=True)
class FolderScan:
    """A folder's checkpoints by their ``.json`` files.

    Attributes:
        committed: The ``.pt`` paths of the committed checkpoints, oldest first.
        refused: Checkpoints that may not be read, ``.pt`` path -> why (a file of theirs is a
            link to somewhere outside the folder).
    """

    committed: list[Path] = field(default_factory=list)
    refused: dict[Path, str] = field(default_factory=dict)


def scan_folder(folder: StrPath) -> FolderScan:
    """The checkpoints in ``folder``, committed and refused, without a word (``list_checkpoints``
    warns about the refused ones)."""
    folder = Path(folder)
    scan = FolderScan()
    if not folder.is_dir():
        return scan
    found = [p.with_suffix(".pt") for p in folder.glob("checkpoint-*.json") if _NAME.match(p.name)]
    for path in sorted(found, key=sequence_of):
        why = _outside(path.with_suffix(".json")) or _outside(path)
        if why is None:
            scan.committed.append(path)
        else:
            scan.refused[path] = why
    return scan


def list_checkpoints(folder: StrPath) -> list[Path]:
    """The committed checkpoints in ``folder`` (their ``.pt`` paths), oldest first.

    A checkpoint is committed once its ``.json`` file exists; intact or not is checked on load.
    A checkpoint whose ``.pt`` or ``.json`` is a link to somewhere outside the folder is left
    out, with a warning that says why.
    """
    scan = scan_folder(folder)
    for path, why in scan.refused.items():
        log.warning("Skipping checkpoint %s: %s.", path, why)
    return scan.committed


def latest_checkpoint(folder: StrPath, *, check: Callable[[Checkpoint], None] | None = None) -> Checkpoint | None:
    """The newest intact checkpoint in ``folder``, or None when it has none.

    Checkpoints that fail to load (or that ``check`` refuses with a ``CheckpointError``) are
    skipped, newest first, with a warning that names each one and says which checkpoint is
    used instead. Nothing in the folder is changed.

    Raises:
        CheckpointError: when there are checkpoints but none is intact.
    """
    failures: list[str] = []
    for path in reversed(list_checkpoints(folder)):
        try:
            checkpoint = load_checkpoint(path)
            if check is not None:
                check(checkpoint)
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
            + "\nRestore the folder from a backup, or start over: in a folder of your own, or in this "
            f"one once its checkpoints are moved aside with cadence.checkpoint.archive_checkpoints({str(folder)!r})."
        )
    return None
