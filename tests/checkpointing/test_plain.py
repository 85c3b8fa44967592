"""What a checkpoint may hold: a state with a cycle, or nested too deep, is an error naming its
owner and the place inside it, raised when the state is first captured."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import torch

from cadence import Callback
from cadence.callbacks.checkpointer import Checkpointer
from cadence.checkpointing.files import CheckpointError, list_checkpoints, load_checkpoint
from cadence.checkpointing.plain import MAX_DEPTH, check_plain
from cadence.testing import make_test_learner

CYCLE_FIX = (
    r"a checkpoint holds a tree of plain data, so a value that contains itself cannot be saved. "
    r'Return copies without the back-reference, e.g. \{"items": list\(self.items\)\}.'
)


class Cyclic(Callback):
    """A state whose ``["log"]["entries"][1]`` is the ``["log"]`` dict again."""

    def state_dict(self) -> dict[str, Any]:
        log: dict[str, Any] = {"entries": [0]}
        log["entries"].append(log)
        return {"log": log}


class Stateful:
    def __init__(self, state: Any) -> None:
        self.state = state

    def state_dict(self) -> Any:
        return self.state

    def load_state_dict(self, state: Any) -> None:
        self.state = state


def test_a_callback_state_with_a_cycle_names_the_callback_and_the_place(tmp_path: Path) -> None:
    learner = make_test_learner(Cyclic(), Checkpointer(tmp_path, every_steps=1), n_batches=2)
    with pytest.raises(CheckpointError, match=rf"^Cyclic.state_dict\(\) holds a cycle: \['log'\]\['entries'\]\[1\] is the dict at \['log'\] again; {CYCLE_FIX}\nRaised by Checkpointer.batch_end while handling BatchEnd in TrainingPhase.$"):
        learner.fit(1)  # at the first save: the first capture
    assert list_checkpoints(tmp_path) == []


def test_an_extra_object_whose_state_contains_itself_names_its_key(tmp_path: Path) -> None:
    state: list[Any] = [1]
    state.append(state)
    learner = make_test_learner(Checkpointer(tmp_path, extra={"sampler": Stateful(state)}), n_batches=2)
    with pytest.raises(CheckpointError, match=rf"^Checkpointer\(extra=\{{'sampler': ...\}}\).state_dict\(\) holds a cycle: \[1\] is the list at the top again; {CYCLE_FIX}\nRaised by Checkpointer.epoch_end"):
        learner.fit(1)


def test_a_state_nested_too_deep_says_how_deep_it_may_be() -> None:
    value: Any = []
    for _ in range(MAX_DEPTH + 5):
        value = [value]
    with pytest.raises(CheckpointError, match=rf"^Thing.state_dict\(\) nests more than {MAX_DEPTH} levels deep \(at \[0\]\[0\].*\); checkpoints hold plain data nested at most {MAX_DEPTH} levels. Save it flatter, e.g. as a list of entries.$"):
        check_plain(value, "Thing.state_dict()")


def test_a_value_shared_in_several_places_is_saved_once_not_a_cycle(tmp_path: Path) -> None:
    shared = {"lr": 0.1}
    learner = make_test_learner(Checkpointer(tmp_path, extra={"groups": Stateful({"a": shared, "b": [shared, shared]})}), n_batches=2)
    learner.fit(1)
    saved = load_checkpoint(list_checkpoints(tmp_path)[-1]).state["extra"]["groups"]
    assert saved == {"a": {"lr": 0.1}, "b": [{"lr": 0.1}, {"lr": 0.1}]}


def test_many_paths_to_shared_values_are_checked_in_linear_time() -> None:
    value: Any = torch.zeros(1)
    for _ in range(60):  # 2**60 paths from the top, 60 distinct lists
        value = [value, value]
    started = time.perf_counter()
    check_plain(value, "Thing.state_dict()")
    assert time.perf_counter() - started < 1.0
