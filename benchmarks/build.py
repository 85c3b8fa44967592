"""Time to build a Learner (validate declarations, order every plan) against the callback count.

The callbacks form a realistic mix: every one handles several events; each writes a cbstate
entry of its own that the next few read (writer→reader edges), one writes a batch field that others
read, a tenth declare run_after, and pairs that write the same state answer
resolve_conflict. A second table builds a linear run_after chain (each callback runs after the
previous one's type, every one handles the same events), the worst case for transitive edges.

    python benchmarks/build.py
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from cadence import READ, WRITE, Callback, Learner, NoConflict, on
from cadence.events import BackwardEnd, BatchBegin, BatchEnd, EpochBegin, EpochEnd, Event, FitBegin, FitEnd
from cadence.phases import Phase, TrainingPhase, ValidationPhase


class Synthetic(Callback):
    def resolve_conflict(self, other: Callback) -> Any:
        return NoConflict() if isinstance(other, Synthetic) else NotImplemented

    @on(BatchEnd)
    def batch_end(self, event: Event, phase: Phase, learner: Any) -> None: ...

    @on(EpochEnd)
    def epoch_end(self, event: Event, phase: Phase, learner: Any) -> None: ...

    @on(FitBegin)
    def fit_begin(self, event: Event, phase: Phase, learner: Any) -> None: ...


class TrainingOnly(Synthetic):
    @on(BatchBegin, phase=TrainingPhase)
    def batch_begin(self, event: Event, phase: Phase, learner: Any) -> None: ...

    @on(BackwardEnd, phase=TrainingPhase)
    def backward_end(self, event: Event, phase: Phase, learner: Any) -> None: ...


class Late(Synthetic):
    run_after = (TrainingOnly,)

    @on(EpochBegin, phase=ValidationPhase)
    def epoch_begin(self, event: Event, phase: Phase, learner: Any) -> None: ...

    @on(FitEnd)
    def fit_end(self, event: Event, phase: Phase, learner: Any) -> None: ...


def make_callbacks(n: int) -> list[Callback]:
    callbacks: list[Callback] = []
    for i in range(n):
        kind = Late if i % 10 == 9 else TrainingOnly if i % 2 else Synthetic
        cb = kind()
        access: dict[str, Any] = {f"cbstate.entry{i}": WRITE}
        for j in range(max(0, i - 3), i):
            if j % 10 == 9:
                continue  # Late runs after every TrainingOnly, so none may read what it writes
            access[f"cbstate.entry{j}"] = READ
        if i == 0:
            access["batch.y_pred"] = WRITE
        elif i % 7 == 1:
            access["batch.y_pred"] = READ
        cb.state_access = access
        callbacks.append(cb)
    return callbacks


def make_chain(n: int) -> list[Callback]:
    kinds: list[type[Callback]] = []
    for i in range(n):
        kinds.append(type(f"Link{i}", (Synthetic,), {"run_after": tuple(kinds[-1:])}))
    return [kind() for kind in reversed(kinds)]  # listed last to first: the order must come from run_after


def build_time(n: int, repeats: int, make: Callable[[int], list[Callback]] = make_callbacks) -> float:
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    times = []
    for _ in range(repeats):
        callbacks = make(n)
        start = time.perf_counter()
        Learner(model, torch.nn.functional.mse_loss, optimizer, callbacks=callbacks, default_callbacks=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def report(sizes: tuple[int, ...], make: Callable[[int], list[Callback]]) -> None:
    print("callbacks  build time (median)  per callback")
    previous = None
    for n in sizes:
        seconds = build_time(n, repeats=7 if n <= 200 else 3, make=make)
        growth = f"  ×{seconds / previous[1]:.1f} for ×{n / previous[0]:.0f} callbacks" if previous else ""
        print(f"{n:>9}  {seconds * 1e3:>10.1f} ms  {seconds / n * 1e6:>9.0f} µs{growth}")
        previous = (n, seconds)


def main() -> None:
    print("A realistic mix:")
    report((10, 50, 100, 200, 400), make_callbacks)
    print("\nA linear run_after chain:")
    report((10, 50, 200), make_chain)


if __name__ == "__main__":
    main()
