"""ThreadedExecutor against SerialExecutor: I/O-bound handlers, and cheap ones.

1. I/O: ``k`` independent callbacks each spend about 2 ms in I/O at ``BatchEnd``: a sleep
   standing for a network call (``--io sleep``) or writing and fsyncing a small file
   (``--io fsync``, whose duration is whatever the disk gives). The event is fired directly and
   timed, alternating serial and threaded fires in the same process; the median per executor
   over the repetitions gives the speed-up (serial / threaded) for k = 1, 2, 4, 8.
2. Cheap callbacks: the tiny workload (MLP 64-128-10, batch 32, SGD, cross-entropy, one torch
   thread) with Recorder, Metrics and three trivial callbacks. Two learners with identical
   models take training steps in lock-step (ABBA order); per-step times are paired and the
   figure is the median of the paired ratios (threaded / serial), per repetition, then the
   median over repetitions. The A/A line pairs two serial learners (the noise floor).

    python benchmarks/parallel.py            # everything
    python benchmarks/parallel.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from cadence import READ, WRITE, Callback, Learner, SerialExecutor, on
from cadence.events import BackwardEnd, BatchBegin, BatchEnd, Event
from cadence.executors import Executor, ThreadedExecutor
from cadence.phases import Phase, TrainingPhase

TRAINING = TrainingPhase()
BATCH_END = BatchEnd()


# ---- 1. I/O-bound handlers ----------------------------------------------------------------------


class Sleeper(Callback):
    """Waits about 2 ms at BatchEnd, as an upload would."""

    @on(BatchEnd)
    def upload(self, event: Event, phase: Phase, learner: Any) -> None:
        time.sleep(0.002)


class Syncer(Callback):
    """Writes a small file and fsyncs it at BatchEnd."""

    def __init__(self, directory: str, index: int) -> None:
        self.path = os.path.join(directory, f"log{index}.txt")

    @on(BatchEnd)
    def write(self, event: Event, phase: Phase, learner: Any) -> None:
        with open(self.path, "wb") as file:
            file.write(b"step done\n" * 8)
            file.flush()
            os.fsync(file.fileno())


def io_learner(callbacks: list[Callback], executor: Executor) -> Learner:
    model = nn.Linear(1, 1)
    return Learner(
        model, nn.functional.mse_loss, data=([], None), callbacks=callbacks, executor=executor,
        default_callbacks=False,
    )


def time_fire(learner: Learner) -> float:
    start = time.perf_counter()
    learner.fire(BATCH_END, TRAINING)
    return time.perf_counter() - start


def io_benchmark(kind: str, reps: int) -> None:
    print(f"I/O at BatchEnd ({kind}): event wall time, median of {reps} fires each")
    print(f"  {'k':>2}  {'serial':>9}  {'threaded':>9}  {'speed-up':>8}")
    with tempfile.TemporaryDirectory(dir=os.getcwd()) as directory:
        for k in (1, 2, 4, 8):
            make: Callable[[int], Callback] = (
                (lambda i: Sleeper()) if kind == "sleep" else (lambda i: Syncer(directory, i))
            )
            serial = io_learner([make(i) for i in range(k)], SerialExecutor())
            threaded_executor = ThreadedExecutor(max_workers=8)
            threaded = io_learner([make(i) for i in range(k)], threaded_executor)
            for _ in range(ThreadedExecutor.warmup + 2):  # past the warm-up: judged and running
                time_fire(serial), time_fire(threaded)
            times: dict[str, list[float]] = {"serial": [], "threaded": []}
            for rep in range(reps):
                pair = [("serial", serial), ("threaded", threaded)]
                for name, learner in pair if rep % 2 == 0 else pair[::-1]:
                    times[name].append(time_fire(learner))
            threaded_executor.shutdown()
            s, t = statistics.median(times["serial"]), statistics.median(times["threaded"])
            print(f"  {k:>2}  {s * 1e3:>7.2f}ms  {t * 1e3:>7.2f}ms  {s / t:>7.2f}x")


# ---- 2. cheap callbacks on the tiny workload ------------------------------------------------------


class StepCounter(Callback):
    state_access = {"cbstate.counter": WRITE}

    def init(self, learner: Any) -> None:
        learner.cbstate.counter = 0

    @on(BatchEnd)
    def count(self, event: Event, phase: Phase, learner: Any) -> None:
        learner.cbstate.counter += 1


class LossPeek(Callback):
    state_access = {"batch.loss": READ}

    def __init__(self) -> None:
        self.last: Any = None

    @on(BackwardEnd)
    def peek(self, event: Event, phase: Phase, learner: Any) -> None:
        self.last = learner.batch.loss


class Noop(Callback):
    @on(BatchBegin)
    def nothing(self, event: Event, phase: Phase, learner: Any) -> None:
        pass


def tiny_learner(executor: Executor) -> Learner:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    return Learner(
        model,
        nn.functional.cross_entropy,
        torch.optim.SGD(model.parameters(), lr=0.01),
        data=([], None),
        callbacks=[StepCounter(), LossPeek(), Noop()],
        executor=executor,
    )


def paired_ratio(a: Learner, b: Learner, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Median over steps of (b's step time / a's step time), stepping in ABBA order."""
    clock = time.perf_counter
    ratios = []
    for i, batch in enumerate(batches):
        order = (a, b) if i % 2 == 0 else (b, a)
        took = {}
        for learner in order:
            start = clock()
            learner.step(TRAINING, batch)
            took[id(learner)] = clock() - start
        ratios.append(took[id(b)] / took[id(a)])
    return statistics.median(ratios)


def cheap_benchmark(steps: int, reps: int) -> None:
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(32, 64, generator=generator), torch.randint(0, 10, (32,), generator=generator))
        for _ in range(steps)
    ]
    print(f"Cheap callbacks, tiny workload: per-step time vs serial, {steps} steps, median of {reps} repetitions")
    cases: list[tuple[str, Callable[[], Executor]]] = [
        ("A/A (serial vs serial)", SerialExecutor),
        ("threaded vs serial", ThreadedExecutor),
    ]
    for label, make in cases:
        figures = []
        for _ in range(reps):
            serial, other = tiny_learner(SerialExecutor()), tiny_learner(make())
            paired_ratio(serial, other, batches[:100])  # warm up both
            figures.append(paired_ratio(serial, other, batches))
            if isinstance(other.executor, ThreadedExecutor):
                other.executor.shutdown()
        spread = ", ".join(f"{(f - 1) * 100:+.1f}%" for f in figures)
        print(f"  {label:<24} {(statistics.median(figures) - 1) * 100:+.2f}%   (repetitions: {spread})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and steps")
    parser.add_argument("--io", choices=("sleep", "fsync", "both"), default="both")
    parser.add_argument("--skip-cheap", action="store_true")
    args = parser.parse_args()
    io_reps, steps, reps = (15, 500, 3) if args.quick else (60, 2000, 5)
    for kind in ("sleep", "fsync") if args.io == "both" else (args.io,):
        io_benchmark(kind, io_reps)
    if not args.skip_cheap:
        cheap_benchmark(steps, reps)


if __name__ == "__main__":
    main()
