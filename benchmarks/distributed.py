"""Distributed training: cadence's overhead over a hand-written DDP loop, and the scaling of two
processes against one.

Overhead, measured lock-step as in ``overhead.py``, in each of two ranks (gloo on this
machine's CPUs): the iterable fed to ``Learner.fit`` runs the raw DDP step (its own
``DistributedDataParallel`` over an identical copy of the model, in the same process group)
just before or after it yields each batch, so both loops advance one step apart under the same
machine state. The figure is rank 0's median of the paired per-step ratios (cadence / raw),
repeated; both sides must end with bit-identical weights.

Scaling: samples per second of a compute-bound step (a wide MLP, a large batch per process) on
two processes (per-process batch fixed, so the global batch doubles) against one process; the
efficiency is ``throughput(2) / (2 * throughput(1))``. It needs two free cores.

    python benchmarks/distributed.py            # both
    python benchmarks/distributed.py --quick    # fewer steps, for a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from cadence import Learner
from cadence.distributed import DataParallel, launch
from overhead import MODERATE, Batch, LockStep, Workload, make_batches, make_model, raw_stepper, same_weights

COMPUTE = Workload("compute-bound", (784, 1024, 1024, 10), 1024, 30)


def raw_ddp_stepper(model: nn.Module) -> Callable[[Batch], None]:
    """The hand-written step of ``overhead.py``, through its own DDP wrapper."""
    return raw_stepper(DistributedDataParallel(model))


def lock_step(work: Workload, defaults: bool | None, repeats: int) -> list[tuple[float, bool]]:
    """In each rank: cadence (``defaults``: the full default set, False: no callbacks, None:
    raw against raw, the A/A noise floor) against the raw DDP loop, ``repeats`` times."""
    torch.set_num_threads(1)
    runs = []
    for _ in range(repeats):
        torch.manual_seed(0)
        model = make_model(work.sizes)
        reference = copy.deepcopy(model)
        stream = LockStep(make_batches(work, work.steps), raw_ddp_stepper(reference))
        if defaults is None:
            step = raw_ddp_stepper(model)
            for batch in stream:
                step(batch)
        else:
            learner = Learner(
                model, nn.functional.cross_entropy, torch.optim.SGD(model.parameters(), lr=0.01),
                default_callbacks=defaults, strategy=DataParallel(shard=False),  # the stream is this rank's
            )
            with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
                learner.fit(1, data=(stream, None))
        runs.append((stream.ratio(work.steps // 10), same_weights(model, reference)))
    return runs


def throughput(work: Workload, warmup: int) -> float:
    """Samples per second over all ranks, after ``warmup`` steps."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = make_model(work.sizes)
    batches = make_batches(work, work.steps + warmup)
    learner = Learner(
        model, nn.functional.cross_entropy, torch.optim.SGD(model.parameters(), lr=0.01),
        default_callbacks=False, strategy=DataParallel(shard=False),
    )
    learner.fit(1, data=(batches[:warmup], None))
    started = time.perf_counter()
    learner.fit(1, data=(batches[warmup:], None))
    elapsed = time.perf_counter() - started
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return work.steps * work.batch_size * world / elapsed


def report(label: str, runs: list[tuple[float, bool]]) -> None:
    ratios = [r for r, _ in runs]
    identical = all(same for _, same in runs)
    spread = f"{min(ratios):.3f}–{max(ratios):.3f}"
    print(f"{label:<34} median {statistics.median(ratios):.3f}  (runs {spread})  weights identical: {identical}")


def overhead_in_ranks(work: Workload, repeats: int) -> dict[str, list[tuple[float, bool]]]:
    torch.distributed.init_process_group("gloo")  # as the hand-written loop does; DataParallel joins it
    return {
        "A/A (raw DDP vs raw DDP)": lock_step(work, None, repeats),
        "cadence, no callbacks": lock_step(work, False, repeats),
        "cadence, full default set": lock_step(work, True, repeats),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="a tenth of the steps, two repeats")
    args = parser.parse_args()
    repeats = 2 if args.quick else args.repeats
    work, compute = MODERATE, COMPUTE
    if args.quick:
        work = Workload(work.name, work.sizes, work.batch_size, max(work.steps // 10, 50))
        compute = Workload(compute.name, compute.sizes, compute.batch_size, 8)
    print(f"torch {torch.__version__}, python {sys.version.split()[0]}, {os.cpu_count()} cores, gloo, 1 thread per process")

    print(f"\noverhead, 2 ranks: MLP {'→'.join(map(str, work.sizes))}, batch {work.batch_size} per rank, {work.steps} steps")
    for label, runs in launch(overhead_in_ranks, work, repeats, nprocs=2, threads=1)[0].items():
        report(f"  {label}", runs)

    print(f"\nscaling: MLP {'→'.join(map(str, compute.sizes))}, batch {compute.batch_size} per process, {compute.steps} steps")
    one, two = [], []
    for _ in range(max(repeats // 2, 1)):
        one.append(launch(throughput, compute, 2, nprocs=1, threads=1)[0])
        two.append(launch(throughput, compute, 2, nprocs=2, threads=1)[0])
    alone, pair = statistics.median(one), statistics.median(two)
    print(f"  1 process:  {alone:8.0f} samples/s   (runs {min(one):.0f}–{max(one):.0f})")
    print(f"  2 processes: {pair:8.0f} samples/s   (runs {min(two):.0f}–{max(two):.0f})")
    print(f"  scaling efficiency: {pair / (2 * alone):.2f}")


if __name__ == "__main__":
    main()
