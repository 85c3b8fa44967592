"""Two nodes of one process each, started by torchrun, meeting through a c10d rendezvous on
127.0.0.1: the same weights as one process, the printers on one node only."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distributed import scenarios

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_two_nodes_of_one_process_train_as_one_process(tmp_path: Path) -> None:
    port = free_port()
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
        "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=cadence-two-nodes",
        "--local-addr=127.0.0.1", "--max-restarts=0", "--monitor-interval=0.5",
        str(HERE / "two_nodes.py"), str(tmp_path),
    ]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    nodes = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment)
        for _ in range(2)
    ]
    outputs = []
    try:
        for node in nodes:
            outputs.append(node.communicate(timeout=150)[0])
    finally:
        for node in nodes:
            node.kill()
    assert [node.returncode for node in nodes] == [0, 0], "\n\n".join(outputs)

    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    (tmp_path / "alone").mkdir()
    reference = scenarios.parity(16, str(tmp_path / "alone"))
    for result in ranks:
        for got, expected in zip(result["weights"], reference["weights"]):
            assert torch.allclose(got, expected, atol=1e-6, rtol=0)
        assert result["epochs"]["valid/loss"] == pytest.approx(reference["epochs"]["valid/loss"], abs=1e-6)
    # The printers and the rank-zero file writer: on one node, once.
    printing = [out for out in outputs if "train/loss" in out]
    assert len(printing) == 1 and printing[0].count("train/loss") == 1 and "train epoch 4" in printing[0]
    assert not any("train epoch" in out for out in outputs if out is not printing[0])
    assert len((tmp_path / "epochs.txt").read_text().splitlines()) == 4
