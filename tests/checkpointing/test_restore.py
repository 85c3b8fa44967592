"""Restoring a checkpoint: every load_state_dict is tried on a copy before FitBegin, so a state
that does not fit fails the resume before anything runs; a restore that still fails is a
CheckpointError naming the file and the part, with the model and the optimizer as they were."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from cadence import WRITE, Callback, Learner, Recorder
from cadence.callbacks.checkpointer import Checkpointer
from cadence.checkpointing.files import CheckpointError, list_checkpoints
from cadence.events import FitBegin, FitEnd
from cadence.phases import TrainingPhase
from cadence.testing import make_test_learner
from helpers import RecordingCallback

FIX = r", or leave out resume= to start from the beginning.$"


class Picky(Callback):
    """Keeps a count; refuses the state of a Picky of another kind, after taking its count."""

    def __init__(self, kind: str, lock: bool = False) -> None:
        self.kind, self.count = kind, 0
        self.lock = threading.Lock() if lock else None  # a lock cannot be copied

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count + 7, "kind": self.kind}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = state["count"]
        if state["kind"] != self.kind:
            raise ValueError(f"a Picky({state['kind']!r}) state, but this is Picky({self.kind!r})")


class Tally:
    def __init__(self, kind: str) -> None:
        self.kind = kind

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["kind"] != self.kind:
            raise KeyError(self.kind)


class Tallier(Callback):
    state_access = {"cbstate.tally": WRITE}

    def __init__(self, value: object) -> None:
        self.value = value

    def init(self, learner: Any) -> None:
        learner.cbstate.tally = self.value


def momentum_learner(*callbacks: Callback) -> Learner:
    learner = make_test_learner(*callbacks, n_batches=2)
    learner.optimizer = torch.optim.SGD(learner.model.parameters(), lr=0.1, momentum=0.9)  # it has state
    return learner


def saved(folder: Path, *callbacks: Callback) -> Path:
    momentum_learner(*callbacks, Checkpointer(folder)).fit(1)
    return list_checkpoints(folder)[-1]


def trained(learner: Learner) -> None:
    """Epochs outside fit (they save nothing): weights and momentum a restore must not touch,
    other than the checkpoint's (taken after one epoch)."""
    for _ in range(3):
        learner.epoch(TrainingPhase(), learner.data[0])  # type: ignore[index]


def before(learner: Learner) -> dict[str, Any]:
    """What a refused or failed restore must leave as it was."""
    momentum = [s["momentum_buffer"].clone() for s in learner.optimizer.state.values()]
    return {"weight": learner.model.weight.detach().clone(), "momentum": momentum}


def unchanged(learner: Learner, expected: dict[str, Any]) -> bool:
    now = before(learner)
    return torch.equal(now["weight"], expected["weight"]) and len(now["momentum"]) == len(expected["momentum"]) and all(
        torch.equal(a, b) for a, b in zip(now["momentum"], expected["momentum"])
    )


def resuming(tmp_path: Path, then: list[Callback], now: list[Callback]) -> tuple[Path, Learner, list[Any], dict[str, Any]]:
    """A checkpoint taken with the callbacks ``then``, and a trained learner with ``now`` (and a
    recorder of its events) to resume it: ``(path, learner, events, what it holds now)``."""
    path = saved(tmp_path / "run", *then)
    events: list[Any] = []
    learner = momentum_learner(RecordingCallback(events), *now, Checkpointer(tmp_path / "again"))
    trained(learner)
    expected, events[:] = before(learner), []
    return path, learner, events, expected


def test_a_callback_state_that_does_not_fit_is_refused_before_anything_runs(tmp_path: Path) -> None:
    picky = Picky("b")
    path, learner, events, expected = resuming(tmp_path, [Picky("a")], [picky])
    with pytest.raises(CheckpointError, match=(
        rf"^{path}: Picky.load_state_dict refuses the state the checkpoint holds for it \(ValueError: a "
        rf"Picky\('a'\) state, but this is Picky\('b'\)\), tried before anything was restored. Build Picky as "
        rf"the run that saved the checkpoint did \(a [\w.]*test_restore.Picky, with the same arguments\){FIX}"
    )) as caught:
        learner.fit(2, resume=path)
    assert isinstance(caught.value.__cause__, ValueError)
    assert events == [] and unchanged(learner, expected)
    assert picky.count == 0  # it was tried on a copy: the callback itself took nothing


@pytest.mark.parametrize(("then", "now", "message"), [
    (Tally("a"), Tally("b"), r"cbstate.tally.load_state_dict refuses the state the checkpoint holds for it \(KeyError: 'b'\), tried before anything was restored. Build the learner with the callbacks the checkpoint was taken with \(Tallier, Checkpointer\), which create cbstate.tally in their init\(\)" + FIX),
    (Tally("a"), 3, r"holds cbstate.tally as the state of an object, but this learner's cbstate.tally is a int without load_state_dict\(\); build the learner with the callbacks that create it as the checkpoint's run did \(the checkpoint was taken with Tallier, Checkpointer\).$"),
    (3, Tally("a"), r"holds cbstate.tally as plain data, but this learner's cbstate.tally is a Tally, restored with its load_state_dict\(\); build the learner with the callbacks that create it as the checkpoint's run did \(the checkpoint was taken with Tallier, Checkpointer\).$"),
])
def test_a_cbstate_entry_that_does_not_fit_is_refused_before_anything_runs(tmp_path: Path, then: object, now: object, message: str) -> None:
    path = saved(tmp_path / "run", Tallier(then))
    events: list[Any] = []
    learner = momentum_learner(RecordingCallback(events), Tallier(now), Checkpointer(tmp_path / "again"))
    with pytest.raises(CheckpointError, match=rf"^{path}:? {message}"):
        learner.fit(2, resume=path)
    assert events == []


def test_an_extra_state_that_does_not_fit_is_refused_before_anything_runs(tmp_path: Path) -> None:
    momentum_learner(Checkpointer(tmp_path / "run", extra={"tally": Tally("a")})).fit(1)
    path = list_checkpoints(tmp_path / "run")[-1]
    learner = momentum_learner(Checkpointer(tmp_path / "again", extra={"tally": Tally("b")}))
    with pytest.raises(CheckpointError, match=(
        rf"^{path}: Checkpointer\(extra=\{{'tally': ...\}}\).load_state_dict refuses the state the checkpoint "
        rf"holds for it \(KeyError: 'b'\), tried before anything was restored. Pass the kind of object that was "
        rf"saved, built the same way, as Checkpointer\(extra=\{{'tally': ...\}}\){FIX}"
    )):
        learner.fit(2, resume=path)


def test_a_restore_that_fails_after_fit_begin_leaves_the_model_and_the_optimizer(tmp_path: Path) -> None:
    path, learner, events, expected = resuming(tmp_path, [Recorder(), Picky("a")], [Recorder(), Picky("b", lock=True)])
    with pytest.raises(CheckpointError, match=(
        rf"^Restoring {path} failed: Picky.load_state_dict raised ValueError: a Picky\('a'\) state, but this is "
        rf"Picky\('b'\). This fit stops \(the model and the optimizer are as they were; what was restored before "
        rf"Picky holds the checkpoint's state\). Build Picky as the run that saved the checkpoint did"
    )) as caught:
        learner.fit(2, resume=path)  # Picky holds a lock: it could not be tried on a copy
    assert isinstance(caught.value.__cause__, ValueError)
    assert [e for e, *_ in events if e in (FitBegin, FitEnd)] == [FitBegin, FitEnd] and unchanged(learner, expected)


@pytest.mark.parametrize("part", ["model", "optimizer"])
def test_a_model_or_optimizer_that_fails_to_load_leaves_the_other_as_it_was(tmp_path: Path, part: str) -> None:
    path = saved(tmp_path / "run")
    learner = momentum_learner(Checkpointer(tmp_path / "again"))
    trained(learner)
    expected = before(learner)

    def refuse(*args: Any) -> None:
        raise RuntimeError(f"a hook of this {part} refuses")

    if part == "model":
        learner.model.register_load_state_dict_post_hook(refuse)
        kept = r"the optimizer is put back as it was; the model may hold part of the checkpoint's weights"
    else:
        learner.optimizer.register_load_state_dict_pre_hook(refuse)
        kept = r"the model is as it was"
    with pytest.raises(CheckpointError, match=(
        rf"^Restoring {path} failed: {part}.load_state_dict raised RuntimeError: a hook of this {part} refuses. "
        rf"This fit stops \({kept}\). Build the learner with the model and the optimizer the checkpoint was "
        rf"taken with{FIX}"
    )):
        learner.fit(2, resume=path)
    if part == "model":  # the hook runs once the weights are in: only the optimizer is as it was
        expected["weight"] = learner.model.weight.detach().clone()
    assert unchanged(learner, expected)


class Popper(Callback):
    """Takes its state apart while loading it; says which model it refers to then."""

    models: ClassVar[list[torch.nn.Module]] = []  # shared by the copies: not copied with them

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.count = model, 0

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count + 1}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = state.pop("count")
        type(self).models.append(self.model)


def test_the_copies_share_the_model_and_leave_the_checkpoint_whole(tmp_path: Path) -> None:
    saving = momentum_learner(Checkpointer(tmp_path / "run"))
    saving.add_callback(Popper(saving.model))
    saving.fit(1)
    learner = momentum_learner(Checkpointer(tmp_path / "again"))
    popper = Popper(learner.model)
    learner.add_callback(popper)
    Popper.models.clear()
    learner.fit(1, resume=list_checkpoints(tmp_path / "run")[-1])
    assert popper.count == 1  # the state the copy took apart was whole again for the restore
    assert len(Popper.models) == 2 and all(model is learner.model for model in Popper.models)
