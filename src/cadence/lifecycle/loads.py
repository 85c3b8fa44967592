"""When each callback's state was last loaded: every ``load_state_dict`` of a ``Callback``
subclass is counted (``Callback`` wraps the method when the class is created), so that
``cadence.lifecycle.resets`` can tell state loaded between two fits, which the next fit keeps,
from state a fit restored itself (a resume), which the next fit resets.

It imports nothing from cadence: ``callback`` and ``resets`` both use it.
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

__all__ = ["counting_loads", "last_load", "loads_so_far", "uncounted"]

F = TypeVar("F", bound=Callable[..., Any])

_count = 0  # load_state_dict calls so far, of every callback
_paused = 0  # > 0 inside uncounted()
# id -> (the callback, the count after its last load); keyed by id so that callbacks need not
# be hashable, and weak, so that none is kept alive.
_LAST: dict[int, tuple[weakref.ref[Any], int]] = {}


def counting_loads(load: F) -> F:
    """``load`` (a ``load_state_dict`` method), counting each call that returns.

    Example:
        >>> class Saved:
        ...     @counting_loads
        ...     def load_state_dict(self, state):
        ...         self.state = state
        >>> saved = Saved()
        >>> before = loads_so_far()
        >>> saved.load_state_dict({})
        >>> last_load(saved) == loads_so_far() == before + 1
        True
    """

    @functools.wraps(load)
    def load_state_dict(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = load(self, *args, **kwargs)
        _note(self)
        return result

    return load_state_dict  # type: ignore[return-value]


@contextlib.contextmanager
def uncounted() -> Iterator[None]:
    """Loads inside are not counted: for cadence's own restores of what it changed (``lr_find``
    puts every callback's state back as it found it, which is no new state for the next fit)."""
    global _paused
    _paused += 1
    try:
        yield
    finally:
        _paused -= 1


def loads_so_far() -> int:
    """How many loads there have been."""
    return _count


def last_load(obj: object) -> int:
    """``loads_so_far()`` right after ``obj``'s last load, or 0 if it was never loaded."""
    entry = _LAST.get(id(obj))
    return entry[1] if entry is not None and entry[0]() is obj else 0


def _note(obj: object) -> None:
    global _count
    if _paused:
        return
    _count += 1
    key = id(obj)
    _LAST[key] = (weakref.ref(obj, lambda _: _LAST.pop(key, None)), _count)
