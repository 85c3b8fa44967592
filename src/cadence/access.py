"""Declared state access: READ/WRITE, path parsing and overlap, and the protected learner view.

A callback declares what it touches as ``{"batch.loss": READ, "cbstate.history": WRITE}`` (or the
equivalent nested ``{"batch": {"loss": READ}}``). ``WRITE`` implies read; anything undeclared is
off limits. Each handler sees the learner through a ``LearnerView`` built once per callback that
enforces the declaration. Enforcement is shallow: ``model``, ``optimizer``, ``loss_fn``,
``data`` and ``adapter`` (the learner's ``BatchAdapter``) are handed out as the objects
themselves, and a declared ``cbstate`` entry is handed out as is, so a ``READ`` of a mutable
object cannot stop a handler from mutating it.
"""

from __future__ import annotations

import enum
import functools
import operator
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cadence.errors import DeclarationError, ProtectedAccessError
from cadence.phases import known_batch_fields

__all__ = [
    "READ",
    "WRITE",
    "Access",
    "AccessSet",
    "LearnerView",
    "Path",
    "merge_accesses",
    "overlaps",
    "parse_state_access",
]

Path = tuple[str, ...]

OBJECT_ROOTS = ("model", "optimizer", "loss_fn", "data", "adapter")
ROOTS = (*OBJECT_ROOTS, "batch", "cbstate")


class Access(enum.IntEnum):
    """The access a callback declares on a path. ``WRITE`` implies read."""

    READ = 1
    WRITE = 2

    def __repr__(self) -> str:
        return self.name


READ = Access.READ
WRITE = Access.WRITE


def overlaps(a: Path, b: Path) -> bool:
    """Whether two paths touch common state: one is a prefix of the other.

    Example:
        >>> overlaps(("batch",), ("batch", "loss")), overlaps(("batch", "x"), ("batch", "y"))
        (True, False)
    """
    n = min(len(a), len(b))
    return a[:n] == b[:n]


def dotted(path: Path) -> str:
    return ".".join(path)


@dataclass(frozen=True, slots=True)
class AccessSet:
    """A parsed declaration: the paths a callback writes and those it only reads."""

    writes: tuple[Path, ...] = ()
    reads: tuple[Path, ...] = ()

    def all(self) -> tuple[Path, ...]:
        return self.writes + self.reads

    def writes_overlapping(self, path: Path) -> tuple[Path, ...]:
        return tuple(p for p in self.writes if overlaps(p, path))

    def reads_overlapping(self, path: Path) -> tuple[Path, ...]:
        return tuple(p for p in self.all() if overlaps(p, path))


def merge_accesses(parts: Iterable[AccessSet]) -> AccessSet:
    """One ``AccessSet`` covering all of ``parts``: every path written in any, then every path
    only read (what a callback touches over all its handlers).

    Example:
        >>> merge_accesses([AccessSet(reads=(("batch", "loss"),)), AccessSet(writes=(("batch", "loss"),))])
        AccessSet(writes=(('batch', 'loss'),), reads=())
    """
    parts = list(parts)
    writes = tuple(dict.fromkeys(p for part in parts for p in part.writes))
    reads = tuple(dict.fromkeys(p for part in parts for p in part.reads if p not in writes))
    return AccessSet(writes=writes, reads=reads)


def parse_state_access(owner: str, declaration: object, *, where: str | None = None) -> AccessSet:
    """Parse and validate a ``state_access`` declaration of the callback named ``owner``;
    ``where`` names the declaration in messages (``"Printer.state_access"`` by default; a
    handler's own ``access=`` passes its label).

    Raises:
        DeclarationError: naming the declaration and the offending path, with the fix.

    Example:
        >>> parse_state_access("Printer", {"batch": {"loss": READ}, "cbstate.history": READ})
        AccessSet(writes=(), reads=(('batch', 'loss'), ('cbstate', 'history')))
    """
    where = f"{owner}.state_access" if where is None else where
    if not isinstance(declaration, Mapping):
        raise DeclarationError(
            f"{where} must be a dict of paths to READ or WRITE, e.g. "
            f'{{"batch.loss": READ}}; got {type(declaration).__name__}.'
        )
    found: dict[Path, Access] = {}
    if declaration:
        _collect(where, (), declaration, found)
    writes = tuple(p for p, a in found.items() if a is WRITE)
    reads = tuple(p for p, a in found.items() if a is READ)
    return AccessSet(writes=writes, reads=reads)


def _collect(where: str, prefix: Path, declaration: Mapping[Any, Any], found: dict[Path, Access]) -> None:
    if not declaration:
        under = f" under {dotted(prefix)!r}" if prefix else ""
        raise DeclarationError(
            f"{where} has an empty dict{under}. Declare at least one path, "
            f'e.g. {{"batch.loss": READ}}, or leave the entry out.'
        )
    for key, value in declaration.items():
        if not isinstance(key, str) or not key:
            raise DeclarationError(
                f"{where} has the key {key!r}; keys are dotted paths such as "
                f'"batch.loss" or "cbstate.history".'
            )
        segments = tuple(key.split("."))
        if not all(s.isidentifier() and not s.startswith("_") for s in segments):
            raise DeclarationError(
                f"{where} has the malformed path {key!r}; a path is dot-separated "
                f'names not starting with "_", such as "batch.loss".'
            )
        path = prefix + segments
        if isinstance(value, Mapping):
            _collect(where, path, value, found)
            continue
        if not isinstance(value, Access):
            raise DeclarationError(
                f"{where} declares {value!r} for {dotted(path)!r}; use READ or WRITE "
                f'(from cadence import READ, WRITE), e.g. {{"{dotted(path)}": READ}}.'
            )
        _check_path(where, path)
        found[path] = max(found.get(path, value), value)


def _check_path(where: str, path: Path) -> None:
    root = path[0]
    if root in OBJECT_ROOTS and len(path) > 1:
        raise DeclarationError(
            f"{where} declares {dotted(path)!r}, but {root} is handed out whole; "
            f'declare {{"{root}": READ}} or {{"{root}": WRITE}}.'
        )
    if root == "batch" and len(path) > 1:
        fields = known_batch_fields()
        if len(path) > 2 or path[1] not in fields:
            raise DeclarationError(
                f"{where} declares {dotted(path)!r}, which is not a batch field. "
                f"Batch fields are {', '.join(sorted(fields))} (a custom phase adds more through "
                f"its batch_type)."
            )
    if root not in ROOTS:
        raise DeclarationError(
            f"{where} declares {dotted(path)!r}, which is not learner state. Valid "
            f"paths start with {', '.join(ROOTS)}; shared state goes under cbstate, e.g. "
            f'"cbstate.{root}".'
        )


def _fix(where: str, path: str, access: Access) -> str:
    return f'Declare it in {where}, e.g. {{"{path}": {access.name}}}.'


def _read_error(where: str, path: str) -> ProtectedAccessError:
    return ProtectedAccessError(f"Read access to Learner.{path} disallowed.\n{_fix(where, path, READ)}")


def _write_error(owner: str, where: str, path: str, readable: bool) -> ProtectedAccessError:
    # A handler's own access= is what the view enforces: name it, not the callback.
    declarer = owner if where == f"{owner}.state_access" else where
    hint = f"{declarer} declares it READ; declare WRITE instead. " if readable else ""
    return ProtectedAccessError(
        f"Write access to Learner.{path} disallowed.\n{hint}{_fix(where, path, WRITE)}"
    )


class _SubView:
    """The protected view of ``learner.batch`` or ``learner.cbstate`` for one callback (or one
    handler with its own access; ``where`` names the declaration in fix hints).

    Enforcement stops at the first name below the root; deeper path segments only refine
    overlap in the graph. The permission sets are fixed when the view is built, so a check is
    one set lookup.
    """

    __slots__ = ("_target", "_root", "_owner", "_where", "_read_all", "_write_all", "_readable", "_writable")

    def __init__(self, target: object, root: str, owner: str, access: AccessSet, where: str) -> None:
        set_ = object.__setattr__
        writes = [p for p in access.writes if p[0] == root]
        reads = [p for p in access.reads if p[0] == root]
        set_(self, "_target", target)
        set_(self, "_root", root)
        set_(self, "_owner", owner)
        set_(self, "_where", where)
        set_(self, "_write_all", any(len(p) == 1 for p in writes))
        set_(self, "_read_all", self._write_all or any(len(p) == 1 for p in reads))
        set_(self, "_writable", frozenset(p[1] for p in writes if len(p) > 1))
        set_(self, "_readable", self._writable | frozenset(p[1] for p in reads if len(p) > 1))

    def __getattr__(self, name: str) -> Any:
        if self._read_all or name in self._readable:
            return getattr(self._target, name)
        if name.startswith("__"):
            raise AttributeError(name)
        raise _read_error(self._where, f"{self._root}.{name}")

    def __setattr__(self, name: str, value: Any) -> None:
        if not (self._write_all or name in self._writable):
            raise _write_error(self._owner, self._where, f"{self._root}.{name}", self._can_read(name))
        setattr(self._target, name, value)

    def __delattr__(self, name: str) -> None:
        if not (self._write_all or name in self._writable):
            raise _write_error(self._owner, self._where, f"{self._root}.{name}", self._can_read(name))
        delattr(self._target, name)

    def __contains__(self, name: str) -> bool:
        if not self._can_read(name):
            raise _read_error(self._where, f"{self._root}.{name}")
        return hasattr(self._target, name)

    def _can_read(self, name: str) -> bool:
        return self._read_all or name in self._readable

    def __repr__(self) -> str:
        return f"<{self._owner}'s view of Learner.{self._root}>"


def _sub_view(target: object, root: str, owner: str, access: AccessSet, where: str) -> _SubView:
    """A ``_SubView`` whose declared names are properties: a permitted read then runs in C
    (``attrgetter``) instead of through ``__getattr__``. Denied names, and everything when
    the whole root is declared, still go through ``__getattr__``."""
    names = frozenset(p[1] for p in access.all() if p[0] == root and len(p) > 1)
    return _view_class(names)(target, root, owner, access, where)


@functools.cache
def _view_class(names: frozenset[str]) -> type[_SubView]:
    if not names:
        return _SubView
    namespace: dict[str, Any] = {name: property(operator.attrgetter(f"_target.{name}")) for name in names}
    namespace["__slots__"] = ()
    return type("_SubView", (_SubView,), namespace)


class LearnerView:
    """The learner as one callback's handlers see it: every read and write is checked against
    the callback's ``state_access``. Built once per callback, when it joins a learner, and once
    per handler that declares its own access (``where`` names that declaration in fix hints,
    ``"<owner>.state_access"`` by default).

    ``batch`` and ``cbstate`` are always views, so an error names the full path; ``model``,
    ``optimizer``, ``loss_fn``, ``data`` and ``adapter`` are the objects themselves. The
    learner's methods are not exposed.
    """

    __slots__ = ("batch", "cbstate", "_learner", "_owner", "_where", "_readable", "_writable")

    batch: Any
    cbstate: Any

    def __init__(self, learner: object, owner: str, access: AccessSet, where: str | None = None) -> None:
        set_ = object.__setattr__
        where = f"{owner}.state_access" if where is None else where
        set_(self, "_learner", learner)
        set_(self, "_owner", owner)
        set_(self, "_where", where)
        set_(self, "batch", _sub_view(getattr(learner, "batch"), "batch", owner, access, where))
        set_(self, "cbstate", _sub_view(getattr(learner, "cbstate"), "cbstate", owner, access, where))
        set_(self, "_readable", frozenset(p[0] for p in access.all() if p[0] in OBJECT_ROOTS))
        set_(self, "_writable", frozenset(p[0] for p in access.writes if p[0] in OBJECT_ROOTS))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        if name in self._readable:
            return getattr(self._learner, name)
        if name in OBJECT_ROOTS:
            raise _read_error(self._where, name)
        raise ProtectedAccessError(
            f"Learner.{name} is not state a callback can access.\nHandlers see "
            f"{', '.join(ROOTS)}; share your own state through cbstate, e.g. "
            f'{{"cbstate.{name}": WRITE}}, and change the course of training by raising '
            f"CancelBatch, CancelEpoch or CancelFit."
        )

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("batch", "cbstate"):
            raise ProtectedAccessError(
                f"Learner.{name} cannot be replaced; assign its entries instead, e.g. "
                f'learner.{name}.<name> = value with {{"{name}.<name>": WRITE}} declared in '
                f"{self._where}."
            )
        if name in self._writable:
            setattr(self._learner, name, value)
            return
        if name in OBJECT_ROOTS:
            raise _write_error(self._owner, self._where, name, name in self._readable)
        raise ProtectedAccessError(
            f"Write access to Learner.{name} disallowed.\nLearner.{name} is not learner state; "
            f'share state through cbstate, e.g. {{"cbstate.{name}": WRITE}}.'
        )

    def __repr__(self) -> str:
        return f"<{self._owner}'s view of the Learner>"
