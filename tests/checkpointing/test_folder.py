"""A checkpoint folder belongs to one run: a fresh fit into a used folder is refused before
FitBegin, a resumed fit into its own folder goes on, and archive_checkpoints moves an earlier
run aside."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cadence import Metrics
from cadence.callbacks.checkpointer import Checkpointer
from cadence.checkpoint import archive_checkpoints
from cadence.checkpointing.files import CheckpointError, list_checkpoints, load_checkpoint
from cadence.testing import make_test_learner
from helpers import RecordingCallback


def names(folder: Path) -> list[str]:
    return [p.name for p in list_checkpoints(folder)]


def contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


CONTINUE = (
    r'fit\(n_epochs, resume="latest"\), where n_epochs counts all the run\'s epochs, those before its '
    r"checkpoint included"
)


def used(folder: Path) -> list[str]:
    make_test_learner(Checkpointer(folder), n_batches=2).fit(2)
    return names(folder)


def test_a_fresh_fit_into_a_used_folder_is_refused_before_anything_runs(tmp_path: Path) -> None:
    assert used(tmp_path) == ["checkpoint-000001-epoch1-batch0.pt", "checkpoint-000002-epoch2-batch0.pt"]
    before = contents(tmp_path)
    events: list[object] = []
    learner = make_test_learner(RecordingCallback(events), Checkpointer(tmp_path), n_batches=2)
    name = str(tmp_path)
    with pytest.raises(CheckpointError, match=(
        rf"^This fit would save into '{name}', which holds 2 checkpoint\(s\) of another run \(the newest: "
        rf"checkpoint-000002-epoch2-batch0.pt\). A checkpoint folder belongs to one run: mixing two would "
        rf"continue the old numbering, rotate this run's checkpoints out and keep the old run's best. "
        rf'Either continue that run instead: {CONTINUE} \(its newest was taken after epoch 2 of a fit\(2\), so '
        rf'fit\(2, resume="latest"\) has nothing left to train and fit\(3, resume="latest"\) trains one epoch '
        rf"more\); or give this run a folder of its own: Checkpointer\('{name}-2'\); or start over in this one "
        rf"after moving the old checkpoints into a subfolder: cadence.checkpoint.archive_checkpoints\('{name}'\).$"
    )):
        learner.fit(3)
    assert events == [] and contents(tmp_path) == before  # no FitBegin, nothing written


def test_a_resumed_fit_goes_on_in_its_own_folder(tmp_path: Path) -> None:
    used(tmp_path)
    make_test_learner(Checkpointer(tmp_path), n_batches=2).fit(4, resume="latest")
    assert names(tmp_path) == ["checkpoint-000003-epoch3-batch0.pt", "checkpoint-000004-epoch4-batch0.pt"]
    older = tmp_path / "checkpoint-000003-epoch3-batch0.pt"
    make_test_learner(Checkpointer(tmp_path), n_batches=2).fit(5, resume=older)  # a checkpoint of its own
    assert names(tmp_path)[-1] == "checkpoint-000006-epoch5-batch0.pt"


def test_resuming_another_folders_checkpoint_into_a_used_folder_is_refused(tmp_path: Path) -> None:
    source, target = tmp_path / "source", tmp_path / "target"
    used(source)
    used(target)
    path = list_checkpoints(source)[0]
    with pytest.raises(CheckpointError, match=(
        rf"^fit\(resume=...\) continues {path}, but would save into '{target}', which holds 2 checkpoint\(s\) "
        rf"of another run \(the newest: checkpoint-000002-epoch2-batch0.pt\). A checkpoint folder belongs "
        rf"to one run: .* Either save the continued run where it came from: Checkpointer\('{source}'\); or "
        rf"give this run a folder of its own: Checkpointer\('{target}-2'\); or start over"
    )):
        make_test_learner(Checkpointer(target), n_batches=2).fit(3, resume=path)
    make_test_learner(Checkpointer(tmp_path / "empty"), n_batches=2).fit(3, resume=path)  # an empty one is fine
    assert names(tmp_path / "empty") == ["checkpoint-000001-epoch2-batch0.pt", "checkpoint-000002-epoch3-batch0.pt"]


def test_archive_moves_the_earlier_run_aside_and_a_fresh_fit_starts_at_one(tmp_path: Path) -> None:
    old = contents(tmp_path) if used(tmp_path) else {}
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / ".checkpoint-000003-epoch0-batch1.pt.999999999.tmp").write_bytes(b"torn")
    moved = archive_checkpoints(tmp_path)
    assert moved is not None and moved.parent == tmp_path and moved.name.startswith("previous-")
    assert contents(moved) == {**old, ".checkpoint-000003-epoch0-batch1.pt.999999999.tmp": b"torn"}
    assert sorted(os.listdir(tmp_path)) == ["notes.txt", moved.name]
    make_test_learner(Checkpointer(tmp_path), n_batches=2).fit(1)
    assert names(tmp_path) == ["checkpoint-000001-epoch1-batch0.pt"]
    assert load_checkpoint(moved / "checkpoint-000002-epoch2-batch0.pt").meta["position"]["epoch"] == 2
    assert archive_checkpoints(tmp_path / "missing") is None
    second = archive_checkpoints(tmp_path)  # the same second: a folder of its own
    assert second is not None and second != moved and names(second) == ["checkpoint-000001-epoch1-batch0.pt"]


def test_leftovers_without_a_committed_checkpoint_do_not_make_a_folder_used(tmp_path: Path) -> None:
    tmp_path.joinpath("checkpoint-000001-epoch0-batch1.pt").write_bytes(b"never committed")
    make_test_learner(Checkpointer(tmp_path), n_batches=2).fit(1)
    assert names(tmp_path) == ["checkpoint-000002-epoch1-batch0.pt"]


# ---- the fits of one learner are one run ---------------------------------------------------------


def run_of(path: Path) -> object:
    return load_checkpoint(path).meta["run"]


def test_a_second_fit_of_the_same_learner_saves_on_into_its_folder(tmp_path: Path) -> None:
    # mode="max": the best is the first fit's first epoch (the loss falls), kept across the fits.
    checkpointer = Checkpointer(tmp_path, keep_last=2, keep_best=1, mode="max")
    learner = make_test_learner(Metrics(), checkpointer, n_batches=2, lr=0.05)
    learner.fit(2)
    first = checkpointer.run_id
    assert isinstance(first, str) and [run_of(p) for p in list_checkpoints(tmp_path)] == [first, first]
    learner.fit(2)
    learner.fit(1)
    # One run: numbering goes on, the newest two are kept and the best over all the fits.
    assert checkpointer.run_id == first and {run_of(p) for p in list_checkpoints(tmp_path)} == {first}
    assert names(tmp_path) == [
        "checkpoint-000001-epoch1-batch0.pt", "checkpoint-000004-epoch2-batch0.pt", "checkpoint-000005-epoch1-batch0.pt"
    ]
    values = learner.cbstate.metrics.epochs["valid/loss"]
    assert checkpointer.best_path == tmp_path / "checkpoint-000001-epoch1-batch0.pt"
    assert len(values) == 5 and load_checkpoint(checkpointer.best_path).meta["value"] == max(values) == values[0]
    assert load_checkpoint(tmp_path / "checkpoint-000005-epoch1-batch0.pt").meta["n_epochs"] == 1


def test_another_learner_is_another_run_even_with_the_same_checkpointer(tmp_path: Path) -> None:
    checkpointer = Checkpointer(tmp_path)
    make_test_learner(checkpointer, n_batches=2).fit(1)
    before = contents(tmp_path)
    for learner in (make_test_learner(checkpointer, n_batches=2), make_test_learner(Checkpointer(tmp_path), n_batches=2)):
        with pytest.raises(CheckpointError, match=r"which holds 1 checkpoint\(s\) of another run \(the newest: checkpoint-000001-epoch1-batch0.pt\)"):
            learner.fit(1)
    assert contents(tmp_path) == before


def test_a_resumed_fit_continues_the_checkpoints_run_and_its_next_fit_too(tmp_path: Path) -> None:
    make_test_learner(Checkpointer(tmp_path), n_batches=2).fit(1)
    run = run_of(list_checkpoints(tmp_path)[0])
    checkpointer = Checkpointer(tmp_path)
    learner = make_test_learner(checkpointer, n_batches=2)
    learner.fit(2, resume="latest")
    learner.fit(1)  # no resume: the same learner's run goes on
    assert checkpointer.run_id == run and names(tmp_path) == ["checkpoint-000002-epoch2-batch0.pt", "checkpoint-000003-epoch1-batch0.pt"]
    assert {run_of(p) for p in list_checkpoints(tmp_path)} == {run}


@pytest.mark.parametrize(
    ("damage", "hint"),
    [
        ("newest mid-epoch", rf'{CONTINUE} \(its newest was taken after batch 2 of epoch 2 of a fit\(2\), so fit\(2, resume="latest"\) finishes that fit and fit\(3, resume="latest"\) trains one epoch more\); '),
        ("newest unreadable", rf"{CONTINUE}; "),
    ],
)
def test_the_hint_to_resume_says_what_n_epochs_means(tmp_path: Path, damage: str, hint: str) -> None:
    make_test_learner(Checkpointer(tmp_path, every_steps=1, keep_last=10), n_batches=2).fit(2)
    newest = tmp_path / "checkpoint-000006-epoch2-batch0.json"
    if damage == "newest mid-epoch":
        newest.unlink()  # as if the run was killed before its last save
    else:
        newest.write_text("{")
    with pytest.raises(CheckpointError, match=rf"Either continue that run instead: {hint}or give this run"):
        make_test_learner(Checkpointer(tmp_path), n_batches=2).fit(5)
