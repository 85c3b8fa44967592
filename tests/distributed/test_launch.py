"""launch: local processes from a script, and a failing rank that brings the others down."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from cadence.checkpoint import load_checkpoint
from cadence.distributed import launch
from cadence.errors import DistributedError
from distributed import scenarios


def test_sigterm_on_one_rank_saves_one_checkpoint_then_a_failing_rank_brings_the_others_down(tmp_path: Path) -> None:
    # One group of two ranks for both (processes start once): scenarios.interrupted_then_failing.
    started = time.monotonic()
    with pytest.raises(DistributedError) as caught:
        launch(scenarios.interrupted_then_failing, str(tmp_path), nprocs=2, timeout=90)

    # SIGTERM reached rank 1 at step 3; the ranks agreed after step 4's backward pass, saved at
    # step 4's end (rank 0 wrote it, once) and stopped: fit raised SystemExit(143) on both.
    records = [json.loads((tmp_path / f"interrupted-rank{r}.json").read_text()) for r in (0, 1)]
    assert records[0] == records[1] == {"code": 143, "steps": 4, "saved": ["checkpoint-000001-epoch0-batch4.pt"]}
    assert load_checkpoint(tmp_path / "checkpoints" / records[0]["saved"][0]).meta["reason"] == "SIGTERM"

    message = str(caught.value)
    assert message.startswith("launch: rank 1 of 2 failed with RuntimeError: boom on rank 1.")
    # Rank 0 was waiting for rank 1's gradients: it failed by itself, it did not hang.
    assert "After it, rank 0 then failed too, with RuntimeError:" in message and "by peer" in message  # closed or reset
    assert "Its traceback:\nTraceback (most recent call last):" in message
    assert 'raise RuntimeError("boom on rank 1")' in message
    assert time.monotonic() - started < 45


def test_nprocs_must_be_positive() -> None:
    with pytest.raises(ValueError, match=r"launch\(..., nprocs=0\): use a positive int, e.g. nprocs=2."):
        launch(scenarios.failing, nprocs=0)


def test_a_function_the_processes_cannot_import_is_refused_with_the_fix() -> None:
    def local() -> None:  # defined in a function: spawned interpreters cannot import it
        pass

    with pytest.raises(
        DistributedError,
        match=r"launch could not start .*local.* with the 'spawn' start method .* Define it at module level "
        r"in a file that the processes can import, or pass start_method=\"fork\".",
    ):
        launch(local, nprocs=1, start_method="spawn")


def test_a_rank_that_dies_without_an_error_is_named_with_its_exit_code() -> None:
    started = time.monotonic()
    with pytest.raises(DistributedError) as raised:
        launch(scenarios.dies_on_rank_1, nprocs=2, timeout=60, start_method="fork")
    message = str(raised.value)
    assert message.startswith(
        "launch: rank 1 of 2 died with exit code 3 before returning (killed, out of memory, or a crash in "
        "native code); the other ranks were stopped. After it, rank 0 "
    )
    assert time.monotonic() - started < 30


def test_ranks_past_the_timeout_are_stopped_with_the_likely_cause() -> None:
    with pytest.raises(
        DistributedError,
        match=r"launch: rank\(s\) 0, 1 still running after 2 s; stopped them. A rank that waits forever usually "
        r"means the ranks ran different collectives \(or one is stuck\); raise the timeout if the work is just long.",
    ):
        launch(scenarios.sleeps, 30.0, nprocs=2, timeout=2, start_method="fork")


def test_a_rank_that_returns_leaves_the_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    import multiprocessing
    import pickle

    import torch
    import torch.distributed as dist

    from cadence.distributed.launcher import _free_port, _run

    for name in ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK"):
        monkeypatch.setenv(name, "")  # what _run sets is undone after the test
    reader, writer = multiprocessing.Pipe(duplex=False)
    _run(scenarios.joins_a_group_of_one, (), 0, 1, _free_port(), torch.get_num_threads(), writer)
    assert pickle.loads(reader.recv_bytes()) == ("ok", True)
    assert not dist.is_initialized()  # destroyed at the clean exit
