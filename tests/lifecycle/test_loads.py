"""Counting callbacks' loads: every Callback subclass's load_state_dict is counted once it
returns, not when it raises, and not inside uncounted()."""

from __future__ import annotations

from typing import Any

import pytest

from cadence import Callback
from cadence.lifecycle.loads import last_load, loads_so_far, uncounted


class Saved(Callback):
    def __init__(self) -> None:
        self.state: dict[str, Any] = {}

    def state_dict(self) -> dict[str, Any]:
        return dict(self.state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "bad" in state:
            raise ValueError("bad state")
        self.state = dict(state)


class Subclass(Saved):
    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)


def test_a_subclass_load_is_counted_when_it_returns() -> None:
    saved, other = Saved(), Subclass()
    assert last_load(saved) == 0
    saved.load_state_dict({"a": 1})
    assert last_load(saved) == loads_so_far() and saved.state == {"a": 1}
    other.load_state_dict({})
    assert last_load(other) == loads_so_far() > last_load(saved)
    before = loads_so_far()
    with pytest.raises(ValueError, match="bad state"):
        saved.load_state_dict({"bad": True})
    assert loads_so_far() == before  # a failed load loaded nothing


def test_loads_inside_uncounted_are_not_counted() -> None:
    saved = Saved()
    with uncounted():
        saved.load_state_dict({"a": 1})
    assert last_load(saved) == 0 and saved.state == {"a": 1}
