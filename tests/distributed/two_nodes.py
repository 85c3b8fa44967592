"""The training script of tests/distributed/test_two_nodes.py, started by torchrun on each of
two "nodes" (two torchrun agents on this machine, rendezvous on 127.0.0.1).

    torchrun --nnodes=2 --nproc-per-node=1 ... two_nodes.py OUT

Runs ``scenarios.parity`` with a per-rank batch of 8 and writes this rank's results to
``OUT/rank<RANK>.pt``; the printers print on rank 0's node only.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from distributed import scenarios

if __name__ == "__main__":
    out = Path(sys.argv[1])
    result = scenarios.parity(8, str(out))
    print(result["printed"], end="")  # what the printers printed on this rank
    torch.save({"weights": result["weights"], "epochs": result["epochs"]}, out / f"rank{os.environ['RANK']}.pt")
