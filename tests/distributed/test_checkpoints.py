"""Checkpoints of two ranks: written once, resumed by two ranks and by one process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from cadence import Checkpointer, CheckpointError, Learner
from cadence.checkpoint import load_checkpoint
from cadence.distributed.checkpoints import check_resume, write_once
from distributed import scenarios

Ranks = tuple[Path, list[dict[str, Any]]]


def close(got: list[torch.Tensor], expected: list[torch.Tensor], tolerance: float) -> bool:
    return all(torch.allclose(a, b, atol=tolerance, rtol=0) for a, b in zip(got, expected))


def test_rank_zero_writes_each_checkpoint_once_and_commits_it(two_ranks: Ranks) -> None:
    folder, (first, second) = two_ranks
    saved = first["checkpoints"]["saved"]
    assert saved == second["checkpoints"]["saved"]  # every rank got the same paths
    assert len(saved) == 7  # every 2 of 9 steps (4) and every epoch (3)
    assert first["checkpoints"]["files"] == sorted([*saved, *(name.replace(".pt", ".json") for name in saved)])
    meta = load_checkpoint(folder / "checkpoints" / saved[0]).meta
    assert meta["distributed"] == {"world_size": 2, "batch_size": 8, "sharding": "samples"}


def test_a_second_fit_of_the_same_learner_saves_on_into_its_folder_on_every_rank(two_ranks: Ranks) -> None:
    _, (first, second) = two_ranks
    # Every rank has rank zero's run id, which its checkpoints name: the second fit is allowed.
    assert first["second_fit"] == second["second_fit"] and first["second_fit"]["runs"] == [first["second_fit"]["run_id"]]
    assert first["second_fit"]["saved"] == ["checkpoint-000002-epoch1-batch0.pt", "checkpoint-000003-epoch2-batch0.pt"]


def test_a_checkpoint_of_two_ranks_resumes_on_two_ranks_exactly(two_ranks: Ranks) -> None:
    _, ranks = two_ranks
    for result in ranks:
        run, resumed = result["checkpoints"], result["checkpoints"]["resumed"]
        assert close(resumed["weights"], run["weights"], 0.0)
        assert resumed["epochs"] == run["epochs"]  # Metrics resumed mid-epoch with every rank's sums


def test_a_checkpoint_of_two_ranks_resumes_on_one_process_with_the_same_global_batch(two_ranks: Ranks, tmp_path: Path) -> None:
    folder, ranks = two_ranks
    run = ranks[0]["checkpoints"]
    for name in (scenarios.mid_epoch(run["saved"]), "checkpoint-000002-epoch1-batch0.pt"):
        learner = scenarios.make_learner(scenarios.loaders(48, 37, 16), Checkpointer(tmp_path / name))
        with scenarios.printed():
            learner.fit(3, resume=folder / "checkpoints" / name)
        assert close(scenarios.weights(learner.model), run["weights"], 1e-6), name
        for key, values in run["epochs"].items():
            assert learner.cbstate.metrics.epochs[key] == pytest.approx(values, abs=1e-6), (name, key)


def test_resuming_mid_epoch_with_another_global_batch_is_refused(two_ranks: Ranks, tmp_path: Path) -> None:
    folder, ranks = two_ranks
    path = folder / "checkpoints" / scenarios.mid_epoch(ranks[0]["checkpoints"]["saved"])
    learner = scenarios.make_learner(scenarios.loaders(48, 37, 8), Checkpointer(tmp_path))
    with pytest.raises(
        CheckpointError,
        match=r"was taken in the middle of an epoch by 2 rank\(s\) with a batch size of 8 each \(a global "
        r"batch of 16\); this fit has 1 with 8 \(a global batch of 8\), so the rest of the epoch would "
        r"train on other samples. Keep the global batch: give the training DataLoader batch_size=16, or "
        r"resume from a checkpoint taken at the end of an epoch",
    ):
        learner.fit(3, resume=path)


def test_resuming_mid_epoch_without_dataparallel_is_refused(two_ranks: Ranks, tmp_path: Path) -> None:
    folder, ranks = two_ranks
    path = folder / "checkpoints" / scenarios.mid_epoch(ranks[0]["checkpoints"]["saved"])
    model = scenarios.make_model()
    learner = Learner(
        model, torch.nn.functional.mse_loss, torch.optim.Adam(model.parameters()), data=scenarios.loaders(48, 37, 16),
        callbacks=[Checkpointer(tmp_path)], strategy=None,
    )
    with pytest.raises(
        CheckpointError,
        match=r"was taken in the middle of an epoch by 2 DataParallel rank\(s\), and this learner has none: "
        r"the two draw the data in different orders, .* Resume with Learner\(..., strategy=DataParallel\(\)\) "
        r"\(the same on one process\), or resume from a checkpoint taken at the end of an epoch",
    ):
        learner.fit(3, resume=path)


def meta(batch: int, distributed: dict[str, Any] | None) -> dict[str, Any]:
    found: dict[str, Any] = {"position": {"epoch": 1, "batch": batch, "step": 4}}
    if distributed is not None:
        found["distributed"] = distributed
    return found


def test_checkpoints_at_an_epoch_boundary_resume_anywhere() -> None:
    check_resume(Path("c.pt"), meta(0, {"world_size": 4, "batch_size": 3, "sharding": "batches"}), None)
    check_resume(Path("c.pt"), meta(0, None), {"world_size": 2, "batch_size": 8, "sharding": "samples"})


def test_whole_batch_shards_resume_mid_epoch_on_the_same_world_size_only() -> None:
    saved = {"world_size": 2, "batch_size": None, "sharding": "batches"}
    check_resume(Path("c.pt"), meta(3, saved), dict(saved))
    with pytest.raises(
        CheckpointError,
        match=r"c.pt was taken in the middle of an epoch by 2 rank\(s\) sharding batches; this fit has 1 "
        r"sharding batches. Data sharded by whole batches \(or by your own DistributedSampler\) resumes in the "
        r"middle of an epoch on the same number of ranks only: resume with 2 processes, or resume from a checkpoint taken at the end",
    ):
        check_resume(Path("c.pt"), meta(3, saved), {**saved, "world_size": 1})


def test_a_write_outside_a_distributed_fit_just_writes(tmp_path: Path) -> None:
    assert write_once(7, lambda: tmp_path / "written.pt") == tmp_path / "written.pt"


def test_every_rank_resumes_from_the_checkpoint_rank_zero_found(two_ranks: Ranks) -> None:
    folder, (first, second) = two_ranks
    newest = sorted((folder / "latest").glob("*.pt"))[1].name  # of the two, the second epoch's
    for result in (first, second):
        got = result["latest_agreed"]
        assert got["steps"] == 2 * 2 + 2  # two epochs in the checkpoint, one more
    assert first["latest_agreed"]["resumed"] == [f"Resumed from {folder / 'latest' / newest}"]
    assert close(first["latest_agreed"]["weights"], second["latest_agreed"]["weights"], 0.0)


def test_a_checkpoint_that_rank_zero_cannot_find_or_another_rank_cannot_read_stops_every_rank(two_ranks: Ranks) -> None:
    folder, (first, second) = two_ranks
    missing = str(folder / "latest" / "no-such-checkpoint.pt")
    assert first["latest_agreed"]["missing"].startswith(f"fit(resume={missing!r})") or missing in first["latest_agreed"]["missing"]
    assert second["latest_agreed"]["missing"].startswith(
        f"Rank 0 could not find the checkpoint to resume from (fit(resume={missing!r})): CheckpointError: "
    )
    assert second["latest_agreed"]["missing"].endswith(" Every rank stops; rank 0's traceback names the cause.")
    newest = sorted((folder / "latest").glob("*.pt"))[-1]
    assert second["latest_agreed"]["unreadable"] == f"{newest.name} is not readable on this machine"
    assert first["latest_agreed"]["unreadable"] == (
        f"Every rank resumes from the checkpoint rank 0 chose, {newest}, but not every rank could read it "
        f"(rank 1: CheckpointError: {newest.name} is not readable on this machine). Keep the checkpoints where "
        f"every rank reads the same files (one folder on a filesystem all machines share)."
    )


def test_a_checkpoint_due_at_different_steps_or_not_written_by_rank_zero_stops_every_rank(two_ranks: Ranks) -> None:
    _, (first, second) = two_ranks
    expected = (
        "A checkpoint was due, but the ranks are at different training steps (rank 0: step 3, rank 1: step 4), "
        "so none is written. Every rank must run the same number of batches: shard the data with DataParallel "
        "(the default), or give every rank as many batches."
    )
    assert first["group_errors"]["steps"] == second["group_errors"]["steps"] == expected
    assert first["group_errors"]["write"] == "OSError: disk full"
    assert second["group_errors"]["write"] == (
        "CheckpointError: Rank 0 could not write the checkpoint of step 5 (OSError: disk full); every rank "
        "stops. Its traceback names the cause."
    )


def test_a_mid_epoch_checkpoint_of_one_plain_process_resumed_with_dataparallel_is_refused_with_the_fix() -> None:
    with pytest.raises(
        CheckpointError,
        match=r"c.pt was taken in the middle of an epoch without DataParallel, and this learner uses DataParallel: "
        r"the two draw the data in different orders, so the rest of the epoch would train on other samples. "
        r"Resume with Learner\(..., strategy=None\) \(the same on one process\), or resume from a checkpoint "
        r"taken at the end of an epoch \(Checkpointer\(every_epochs=1\)\).",
    ):
        check_resume(Path("c.pt"), meta(3, None), {"world_size": 2, "batch_size": 8, "sharding": "samples"})
