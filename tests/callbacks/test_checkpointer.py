"""Checkpointer: when it saves, what it keeps, what it refuses (Ctrl-C and SIGTERM: tests/checkpointing/test_interrupts.py)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from cadence import READ, WRITE, Callback, CycleError, DeclarationError, Metrics, Recorder, on
from cadence.callbacks.checkpointer import Checkpointer
from cadence.checkpointing.files import CheckpointError, list_checkpoints, load_checkpoint
from cadence.events import BatchEnd, EpochEnd, Event
from cadence.phases import Phase, TrainingPhase, ValidationPhase
from cadence.testing import make_test_learner
from helpers import run_order


def names(folder: Path) -> list[str]:
    return [p.stem for p in list_checkpoints(folder)]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"folder": 3}, TypeError, r'expects a path, e.g. "checkpoints"; got int'),
        ({"every_epochs": 0}, ValueError, r"every_epochs=0\): use an int >= 1, or None for never"),
        ({"every_steps": 2.5}, ValueError, r"every_steps=2.5\): use an int >= 1, or None for never"),
        ({"keep_last": 0}, ValueError, r"keep_last=0\): use an int >= 1 \(the newest is always kept\)"),
        ({"keep_best": -1}, ValueError, r"keep_best=-1\): use an int >= 0"),
        ({"mode": "lowest"}, ValueError, r"mode='lowest'\): expected \"min\" \(lower is better, as for a loss\) or \"max\""),
        ({"monitor": 3}, TypeError, r'monitor=...\) is a cbstate.metrics key such as "valid/loss"; got 3'),
        ({"extra": {"sched": object()}}, TypeError, r"extra=\{'sched': ...\}\) needs an object with state_dict\(\)"),
    ],
)
def test_constructor_errors(kwargs: dict[str, Any], error: type[Exception], message: str) -> None:
    kwargs = {"folder": "checkpoints", **kwargs}
    with pytest.raises(error, match=message):
        Checkpointer(**kwargs)


def test_every_epoch_saves_after_validation_and_keeps_the_last(tmp_path: Path) -> None:
    learner = make_test_learner(Checkpointer(tmp_path, keep_last=2), n_batches=4)
    learner.fit(3)
    assert names(tmp_path) == ["checkpoint-000002-epoch2-batch0", "checkpoint-000003-epoch3-batch0"]
    meta = load_checkpoint(list_checkpoints(tmp_path)[-1]).meta
    assert meta["position"] == {"epoch": 3, "batch": 0, "step": 12}
    assert meta["reason"] == "every 1 epochs" and meta["n_epochs"] == 3
    assert meta["callbacks"] == {"Checkpointer": "cadence.callbacks.checkpointer.Checkpointer"}


def test_every_steps_saves_mid_epoch(tmp_path: Path) -> None:
    learner = make_test_learner(Checkpointer(tmp_path, every_epochs=None, every_steps=3, keep_last=10), n_batches=4)
    learner.fit(2)
    assert names(tmp_path) == [
        "checkpoint-000001-epoch0-batch3",
        "checkpoint-000002-epoch1-batch2",
    ]


def test_without_validation_an_epoch_is_saved_at_the_training_epoch_end(tmp_path: Path) -> None:
    learner = make_test_learner(Checkpointer(tmp_path, every_epochs=2, keep_last=5), n_batches=2)
    learner.fit(4, data=(learner.data[0], None))  # type: ignore[index]
    assert names(tmp_path) == ["checkpoint-000001-epoch2-batch0", "checkpoint-000002-epoch4-batch0"]


def test_keep_best_keeps_the_best_by_monitor_as_well(tmp_path: Path) -> None:
    # The validation loss falls every epoch: with mode="max" the best is the first epoch.
    checkpointer = Checkpointer(tmp_path, keep_last=1, keep_best=1, monitor="valid/loss", mode="max")
    learner = make_test_learner(checkpointer, Metrics(), n_batches=4, lr=0.05)
    learner.fit(4)
    assert names(tmp_path) == ["checkpoint-000001-epoch1-batch0", "checkpoint-000004-epoch4-batch0"]
    first = load_checkpoint(list_checkpoints(tmp_path)[0]).meta
    assert first["monitor"] == "valid/loss" and first["value"] == learner.cbstate.metrics.epochs["valid/loss"][0]


def test_it_runs_after_every_other_callback(tmp_path: Path) -> None:
    learner = make_test_learner(Checkpointer(tmp_path), Recorder(), Metrics())
    assert run_order(learner, BatchEnd, TrainingPhase) == ["Recorder.batch_end", "Metrics.batch_end", "Checkpointer.batch_end"]
    assert run_order(learner, EpochEnd, ValidationPhase)[-1] == "Checkpointer.epoch_end"
    # One line per edge, though each has two reasons (run_after, and Checkpointer reads cbstate).
    assert learner.explain(BatchEnd, TrainingPhase) == (
        "BatchEnd in TrainingPhase:\n"
        "  1. Recorder.batch_end\n"
        "  2. Metrics.batch_end\n"
        "  3. Checkpointer.batch_end\n"
        "       after Recorder: Checkpointer.run_after includes Recorder; Recorder writes cbstate.history, Checkpointer reads cbstate\n"
        "       after Metrics: Checkpointer.run_after includes Metrics; Metrics writes cbstate.metrics, Checkpointer reads cbstate"
    )


def test_two_checkpointers_are_refused_at_build(tmp_path: Path) -> None:
    with pytest.raises(DeclarationError, match=r"A learner takes one Checkpointer; got Checkpointer#1\('.*a'\), Checkpointer#2\('.*b'\). Keep one: .* e.g. Checkpointer\(\"checkpoints\", every_epochs=1, every_steps=500\)."):
        make_test_learner(Checkpointer(tmp_path / "a"), Checkpointer(tmp_path / "b"))


def test_a_callback_cannot_run_after_the_checkpointer(tmp_path: Path) -> None:
    class Upload(Callback):
        run_after = (Checkpointer,)

    learner = make_test_learner(Checkpointer(tmp_path))
    with pytest.raises(CycleError, match=r"Upload.run_after includes Checkpointer, which matches the Checkpointer, but Checkpointer.run_after includes Callback: .* Remove Checkpointer from Upload.run_after"):
        learner.add_callback(Upload())
    assert [type(cb) for cb in learner.callbacks] == [Checkpointer]


def test_epochs_run_outside_fit_save_nothing(tmp_path: Path) -> None:
    learner = make_test_learner(Checkpointer(tmp_path, every_steps=1), n_batches=2)
    learner.epoch(TrainingPhase(), learner.data[0])  # type: ignore[index]
    learner.epoch(ValidationPhase(), learner.data[0])  # type: ignore[index]
    assert not tmp_path.exists() or names(tmp_path) == []


def test_leftovers_of_a_crash_are_removed_at_the_next_save(tmp_path: Path) -> None:
    torn = tmp_path / ".checkpoint-000001-epoch0-batch1.pt.999999999.tmp"  # no such process
    uncommitted = tmp_path / "checkpoint-000002-epoch0-batch2.pt"  # its .json never came
    tmp_path.mkdir(exist_ok=True)
    torn.write_bytes(b"half")
    uncommitted.write_bytes(b"whole")
    learner = make_test_learner(Checkpointer(tmp_path), n_batches=2)
    learner.fit(1)
    assert names(tmp_path) == ["checkpoint-000003-epoch1-batch0"]  # numbered after the leftovers
    assert not torn.exists() and not uncommitted.exists()


@pytest.mark.parametrize("suffix", [".pt", ".json"])
def test_a_refused_checkpoint_is_left_as_it_was_by_later_saves_and_rotation(tmp_path: Path, suffix: str) -> None:
    folder, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    make_test_learner(Checkpointer(folder, keep_last=5), n_batches=2).fit(2)
    swapped = (folder / "checkpoint-000002-epoch2-batch0").with_suffix(suffix)
    elsewhere.mkdir()
    swapped.rename(elsewhere / swapped.name)
    swapped.symlink_to(elsewhere / swapped.name)
    refused = {p.name: os.readlink(p) if p.is_symlink() else p.read_bytes() for p in folder.glob("checkpoint-000002-*")}
    target = (elsewhere / swapped.name).read_bytes()
    # Resumed from the first checkpoint (the second is refused), then saves and rotates past both.
    make_test_learner(Checkpointer(folder, keep_last=1), n_batches=2).fit(4, resume="latest")
    assert sorted(os.listdir(folder)) == sorted([*refused, "checkpoint-000005-epoch4-batch0.json", "checkpoint-000005-epoch4-batch0.pt"])
    assert {p.name: os.readlink(p) if p.is_symlink() else p.read_bytes() for p in folder.glob("checkpoint-000002-*")} == refused
    assert (elsewhere / swapped.name).read_bytes() == target


def test_a_callback_state_that_is_not_plain_data_names_the_callback(tmp_path: Path) -> None:
    class Keeper(Callback):
        def state_dict(self) -> dict[str, Any]:
            return {"when": object()}

    learner = make_test_learner(Keeper(), Checkpointer(tmp_path), n_batches=2)
    with pytest.raises(CheckpointError, match=r"Keeper.state_dict\(\) holds a object at \['when'\]; checkpoints hold tensors"):
        learner.fit(1)


def test_a_callback_state_that_is_not_a_dict_is_refused_with_the_fix(tmp_path: Path) -> None:
    class Listed(Callback):
        def state_dict(self) -> Any:
            return [1, 2]

    learner = make_test_learner(Listed(), Checkpointer(tmp_path), n_batches=2)
    with pytest.raises(CheckpointError, match=r'Listed.state_dict\(\) returned a list; return a dict, e.g. \{"count": self.count\}, or \{\} when it keeps no state.'):
        learner.fit(1)


def test_a_cbstate_entry_nobody_saves_names_the_entry_and_its_writer(tmp_path: Path) -> None:
    class Thing:
        pass

    class Writer(Callback):
        state_access = {"cbstate.thing": WRITE}

        def init(self, learner: Any) -> None:
            learner.cbstate.thing = Thing()

    learner = make_test_learner(Writer(), Checkpointer(tmp_path), n_batches=2)
    with pytest.raises(CheckpointError, match=r"cbstate.thing holds a Thing, which a checkpoint cannot save as is, and Writer does not implement state_dict\(\). Save the entry in that callback's state_dict\(\) and restore it in load_state_dict\(\), or give Thing state_dict\(\) and load_state_dict\(\) methods."):
        learner.fit(1)


def test_plain_cbstate_entries_are_saved_as_they_are(tmp_path: Path) -> None:
    class Counter(Callback):
        state_access = {"cbstate.counts": WRITE}

        def init(self, learner: Any) -> None:
            learner.cbstate.counts = {"batches": 0}

        @on(BatchEnd, phase=TrainingPhase)
        def count(self, event: Event, phase: Phase, learner: Any) -> None:
            learner.cbstate.counts["batches"] += 1

    learner = make_test_learner(Counter(), Checkpointer(tmp_path), n_batches=3)
    learner.fit(2)
    saved = load_checkpoint(list_checkpoints(tmp_path)[-1]).state["cbstate"]
    assert saved == {"plain": {"counts": {"batches": 6}}, "objects": {}}


# ---- Recorder's state ---------------------------------------------------------------------------


def test_recorder_state_round_trips_in_place() -> None:
    recorder = Recorder()
    learner = make_test_learner(recorder, n_batches=3)
    learner.fit(2)
    state = recorder.state_dict()
    assert state == {"history": {"cadence.phases.TrainingPhase": [2, 6, 3], "cadence.phases.ValidationPhase": [2, 6, 3]}}
    history = learner.cbstate.history
    other = Recorder()
    make_test_learner(other).fit(1)
    recorder.load_state_dict(other.state_dict())
    assert learner.cbstate.history is history
    assert history[TrainingPhase()].steps == 16


def test_recorder_refuses_an_unknown_phase() -> None:
    with pytest.raises(ValueError, match=r"names the phase my.GanPhase, which is not defined; import the module"):
        Recorder().load_state_dict({"history": {"my.GanPhase": [1, 2, 3]}})


def test_extra_objects_are_saved(tmp_path: Path) -> None:
    learner = make_test_learner(n_batches=2)
    scheduler = torch.optim.lr_scheduler.StepLR(learner.optimizer, step_size=1)

    class Stepper(Callback):
        state_access = {"optimizer": READ}

        @on(EpochEnd, phase=TrainingPhase)
        def step(self, event: Event, phase: Phase, learner: Any) -> None:
            scheduler.step()

    learner.add_callback(Stepper())
    learner.add_callback(Checkpointer(tmp_path, extra={"lr_scheduler": scheduler}))
    learner.fit(2)
    saved = load_checkpoint(list_checkpoints(tmp_path)[-1]).state["extra"]
    assert saved["lr_scheduler"]["last_epoch"] == 2
    assert json.loads(list_checkpoints(tmp_path)[-1].with_suffix(".json").read_text())["position"]["epoch"] == 2


def test_resume_latest_in_an_unnamed_run_folder_is_refused_with_the_fix(tmp_path: Path) -> None:
    from cadence import RunFolder

    learner = make_test_learner(RunFolder(root=tmp_path / "runs"), Checkpointer(), Recorder(), n_batches=2)
    with pytest.raises(CheckpointError, match=(
        r'fit\(resume="latest"\) looks for the newest checkpoint in the run folder, but RunFolder\(\) has no name: each '
        rf"launch gets a new folder \({tmp_path}/runs/<date>-<n>\), so a relaunch never finds the checkpoints of the one "
        r'before and starts from the beginning every time\. Name the run, e\.g\. RunFolder\("my-run"\), and relaunch with '
        r'the same name; or give the Checkpointer a folder of its own: Checkpointer\("checkpoints"\)\.'
    )):
        learner.fit(2, resume="latest")
    assert not (tmp_path / "runs").exists()  # refused before anything was created
    learner.fit(1)  # in one process, the unnamed run's folder is known once it exists:
    learner.fit(2, resume="latest")  # this resumes from it
    assert len(list_checkpoints(learner.cbstate.run.path / "checkpoints")) == 2
    named = make_test_learner(RunFolder("my-run", root=tmp_path / "runs"), Checkpointer(), Recorder(), n_batches=2)
    named.fit(1, resume="latest")  # a named run's first launch starts from the beginning


def test_building_or_checking_a_learner_creates_no_run_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cadence import RunFolder
    from cadence.graph.check import find_errors

    monkeypatch.chdir(tmp_path)
    learner = make_test_learner(RunFolder(), Checkpointer(), Recorder(), n_batches=2)
    assert find_errors(learner.callbacks) == []
    assert repr(learner.get_callback(Checkpointer)) == "Checkpointer()" and not (tmp_path / "runs").exists()
    learner.fit(1)
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [learner.cbstate.run.name]
