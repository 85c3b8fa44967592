"""Per-step overhead of cadence against the hand-written PyTorch loop it replaces.

Measured lock-step: the iterable fed to ``Learner.fit`` runs the raw step on an identical copy
of the model just before it yields each batch, so both loops advance one step apart in the same
process and see the same machine state. Per-step times are paired; the figure is the median of
the paired ratios (cadence / raw), repeated, and the median of the repetitions is reported. An
A/A line pairs the raw loop against itself the same way (the noise floor). Both sides must end
with bit-identical weights.

    python benchmarks/overhead.py            # all workloads
    python benchmarks/overhead.py --quick    # fewer steps, for a smoke run
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

import contextlib
import os
import tempfile

from cadence import Callback, Learner, LogMetrics, Metrics, Recorder
from cadence.loggers import CSVLogger, TensorBoardLogger

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Workload:
    name: str
    sizes: tuple[int, ...]
    batch_size: int
    steps: int


TINY = Workload("tiny", (64, 128, 10), 32, 2000)
MODERATE = Workload("moderate", (784, 512, 512, 10), 128, 1000)


def make_model(sizes: tuple[int, ...]) -> nn.Module:
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes, sizes[1:]):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def make_batches(work: Workload, count: int) -> list[Batch]:
    generator = torch.Generator().manual_seed(0)
    return [
        (
            torch.randn(work.batch_size, work.sizes[0], generator=generator),
            torch.randint(0, work.sizes[-1], (work.batch_size,), generator=generator),
        )
        for _ in range(count)
    ]


def raw_stepper(model: nn.Module) -> Callable[[Batch], None]:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = nn.functional.cross_entropy

    def step(batch: Batch) -> None:
        x, y = batch
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()

    return step


class LockStep:
    """Yields batches to the loop under test and runs the reference step on each batch too.

    ``other[i]`` is the time the loop under test spent on batch i (from the yield of batch i to
    the request for batch i+1); ``reference[i]`` the reference step's time on the same batch.
    The reference runs before the yield on even steps and after it on odd ones, so that neither
    side always profits from the other having just warmed the caches.
    """

    def __init__(self, batches: list[Batch], reference: Callable[[Batch], None]) -> None:
        self.batches = batches
        self.reference_step = reference
        self.reference: list[float] = []
        self.other: list[float] = []

    def _time_reference(self, batch: Batch) -> None:
        start = time.perf_counter()
        self.reference_step(batch)
        self.reference.append(time.perf_counter() - start)

    def __iter__(self) -> Iterator[Batch]:
        clock = time.perf_counter
        for i, batch in enumerate(self.batches):
            if i % 2 == 0:
                self._time_reference(batch)
            handed_out = clock()
            yield batch
            self.other.append(clock() - handed_out)
            if i % 2 == 1:
                self._time_reference(batch)

    def __len__(self) -> int:
        return len(self.batches)

    def ratio(self, warmup: int) -> float:
        pairs = zip(self.other[warmup:], self.reference[warmup:])
        return statistics.median(o / r for o, r in pairs)


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def run_cadence(work: Workload, callbacks: list[Callback] | None, defaults: bool) -> tuple[float, bool]:
    torch.manual_seed(0)
    model = make_model(work.sizes)
    reference = copy.deepcopy(model)
    stream = LockStep(make_batches(work, work.steps), raw_stepper(reference))
    learner = Learner(
        model,
        nn.functional.cross_entropy,
        torch.optim.SGD(model.parameters(), lr=0.01),
        callbacks=callbacks or [],
        default_callbacks=defaults,
    )
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):  # the printers' lines
        learner.fit(1, data=(stream, None))
    return stream.ratio(work.steps // 10), same_weights(model, reference)


def run_logged(work: Workload) -> tuple[float, bool]:
    """The full default set plus LogMetrics(every=50) writing to TensorBoard and CSV."""
    with tempfile.TemporaryDirectory() as folder:
        logger = LogMetrics(TensorBoardLogger(os.path.join(folder, "tb")), CSVLogger(os.path.join(folder, "m.csv")), every=50)
        return run_cadence(work, [logger], True)


def run_a_a(work: Workload) -> tuple[float, bool]:
    torch.manual_seed(0)
    model = make_model(work.sizes)
    reference = copy.deepcopy(model)
    stream = LockStep(make_batches(work, work.steps), raw_stepper(reference))
    step = raw_stepper(model)
    for batch in stream:
        step(batch)
    return stream.ratio(work.steps // 10), same_weights(model, reference)


def report(label: str, runs: list[tuple[float, bool]]) -> None:
    ratios = [r for r, _ in runs]
    identical = all(same for _, same in runs)
    spread = f"{min(ratios):.3f}–{max(ratios):.3f}"
    print(f"{label:<66} median {statistics.median(ratios):.3f}  (runs {spread})  weights identical: {identical}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="a tenth of the steps, two repeats")
    args = parser.parse_args()
    torch.set_num_threads(1)
    repeats = 2 if args.quick else args.repeats
    works = [TINY, MODERATE]
    if args.quick:
        works = [Workload(w.name, w.sizes, w.batch_size, max(w.steps // 10, 50)) for w in works]
    print(f"torch {torch.__version__}, python {sys.version.split()[0]}, {repeats} repeats; ratio = cadence / raw per step")
    for work in works:
        print(f"\n{work.name}: MLP {'→'.join(map(str, work.sizes))}, batch {work.batch_size}, {work.steps} steps")
        report("  A/A (raw vs raw, noise floor)", [run_a_a(work) for _ in range(repeats)])
        report("  cadence, no callbacks", [run_cadence(work, None, False) for _ in range(repeats)])
        report(
            "  cadence, Recorder + Metrics",
            [run_cadence(work, [Recorder(), Metrics()], False) for _ in range(repeats)],
        )
        report("  cadence, full default set", [run_cadence(work, None, True) for _ in range(repeats)])
        report("  full default set + LogMetrics(every=50) on TensorBoard and CSV", [run_logged(work) for _ in range(repeats)])


if __name__ == "__main__":
    main()
