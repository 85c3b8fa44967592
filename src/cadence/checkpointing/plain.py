"""What a checkpoint may hold: tensors and plain data that ``torch.load(weights_only=True)``
reads back, as a tree (no cycles) of bounded depth. Checked when a state is captured, so that
a bad ``state_dict()`` is an error naming its owner and the place, not a ``RecursionError``
from ``torch.save`` or a file that cannot be loaded."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import NoReturn

import torch

from cadence.errors import CheckpointError

__all__ = ["MAX_DEPTH", "check_plain"]

# Exact types: subclasses such as numpy.float64 or an IntEnum pickle as their own class.
_PLAIN = frozenset({type(None), bool, int, float, str})
MAX_DEPTH = 100  # pickle recurses per level; a state nested deeper is a bug, not data


def check_plain(value: object, where: str) -> None:
    """Check that ``value`` holds only what ``torch.load(weights_only=True)`` reads back:
    tensors, None, bools, ints, floats, strings, and lists, tuples and dicts of those (dict
    keys: strings or ints), nested at most ``MAX_DEPTH`` levels and without cycles. A
    container may appear at several places (it is saved once); one that contains itself
    cannot be saved.

    Raises:
        CheckpointError: naming ``where`` and the position of the first offending value.

    Example:
        >>> check_plain({"best": 0.5, "counts": [1, 2]}, "EarlyStopping.state_dict()")
        >>> import numpy as np
        >>> check_plain({"best": np.float64(0.5)}, "EarlyStopping.state_dict()")
        Traceback (most recent call last):
        ...
        cadence.errors.CheckpointError: EarlyStopping.state_dict() holds a numpy.float64 at ['best']; ...
        >>> state = {"items": []}
        >>> state["items"].append(state)
        >>> check_plain(state, "Keeper.state_dict()")
        Traceback (most recent call last):
        ...
        cadence.errors.CheckpointError: Keeper.state_dict() holds a cycle: ['items'][0] is the dict at the top again; ...
    """
    _Walk(where).visit(value, "", 0)


class _Walk:
    """A depth-first walk that keeps the containers on the current path (a cycle leads back
    to one of them) and the ones already checked (shared, not cyclic: checked once)."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.open: dict[int, str] = {}
        self.done: set[int] = set()

    def visit(self, value: object, at: str, depth: int) -> None:
        if type(value) in _PLAIN or isinstance(value, torch.Tensor):
            return
        items: Iterable[tuple[object, object]]
        if isinstance(value, (list, tuple)) and type(value) in (list, tuple):
            items = enumerate(value)
        elif isinstance(value, dict) and type(value) in (dict, OrderedDict):
            items = value.items()
        else:
            _refuse(value, self.where, at)
        key = id(value)
        if key in self.done:
            return
        if key in self.open:
            first = self.open[key] or "the top"
            raise CheckpointError(
                f"{self.where} holds a cycle: {at} is the {type(value).__name__} at {first} again; a "
                f"checkpoint holds a tree of plain data, so a value that contains itself cannot be "
                f"saved. Return copies without the back-reference, e.g. {{\"items\": list(self.items)}}."
            )
        if depth >= MAX_DEPTH:
            raise CheckpointError(
                f"{self.where} nests more than {MAX_DEPTH} levels deep (at {at[:200]}...); checkpoints "
                f"hold plain data nested at most {MAX_DEPTH} levels. Save it flatter, e.g. as a list "
                f"of entries."
            )
        self.open[key] = at
        for index, item in items:
            if type(value) not in (list, tuple) and type(index) not in (str, int):
                _refuse(index, self.where, f"{at} (a key)")
            self.visit(item, f"{at}[{index!r}]", depth + 1)
        del self.open[key]
        self.done.add(key)


def _refuse(value: object, where: str, at: str) -> NoReturn:
    kind = type(value)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    raise CheckpointError(
        f"{where} holds a {name}{f' at {at}' if at else ''}; checkpoints hold tensors, numbers, "
        f"strings, bools, None, lists, tuples and dicts only, so that loading never runs code. "
        f"Convert it, e.g. float(value), value.tolist() or torch.as_tensor(value)."
    )
