"""Small doubles shared by the tests."""

from __future__ import annotations

import re
from typing import Any

import torch

from cadence import READ, WRITE, Callback, Learner, MetricValues, on
from cadence.events import BatchEnd, EpochEnd, Event
from cadence.phases import Phase, TrainingPhase

Entry = tuple[type[Event], type[Phase], str]


class RecordingCallback(Callback):
    """Logs ``(event class, phase class, name)`` into a shared list for every event it sees."""

    def __init__(self, log: list[Entry], name: str = "rec") -> None:
        self.log = log
        self.name = name

    @on(Event)
    def record(self, event: Event, phase: Phase, learner: Any) -> None:
        self.log.append((type(event), type(phase), self.name))


class Probe(Callback):
    """Keeps the view its ``init`` received, so a test can poke at it outside a handler.

    Give the instance its declaration: ``Probe({"batch.loss": READ})``.
    """

    def __init__(self, state_access: dict[str, Any] | None = None) -> None:
        self.state_access = state_access or {}
        self.view: Any = None

    def init(self, learner: Any) -> None:
        self.view = learner


class RecordingExecutor:
    """Runs handlers in order, as SerialExecutor does, and logs every plan it is given."""

    def __init__(self) -> None:
        self.runs: list[tuple[type[Event], type[Phase], int]] = []

    def run(self, plan: Any, event: Event, phase: Phase) -> None:
        self.runs.append((type(event), type(phase), len(plan.calls)))
        for handler, view in plan.calls:
            handler(event, phase, view)


def run_order(learner: Learner, event: type[Event], phase: type[Phase]) -> list[str]:
    """The handlers of (event, phase) in run order, as ``explain`` numbers them."""
    text = learner.explain(event, phase)
    return re.findall(r"^  \d+\. (\S+)$", text, flags=re.MULTILINE)


class ScriptedMetrics(Callback):
    """Writes the given values of ``<phase>/score`` to ``cbstate.metrics``, one per epoch of each
    phase, as a producer that plans no keys (so monitors are checked when epochs end)."""

    state_access = {"cbstate.metrics": WRITE}

    def __init__(self, values: list[float], name: str = "score") -> None:
        self.values, self.name = list(values), name

    def init(self, learner: Any) -> None:
        self.metrics = learner.cbstate.metrics = MetricValues()

    @on(EpochEnd)
    def add(self, event: Event, phase: Phase, learner: Any) -> None:
        values = self.metrics.epochs.setdefault(f"{phase.name}/{self.name}", [])
        values.append(self.values[len(values)])

    def reset(self) -> None:  # a new fit plays the script from its start
        self.metrics.epochs.clear()

    def state_dict(self) -> dict[str, Any]:
        return {"epochs": {k: list(v) for k, v in self.metrics.epochs.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.metrics.epochs.clear()
        self.metrics.epochs.update({k: list(v) for k, v in state["epochs"].items()})


def linear_batches(
    sizes: tuple[int, ...] = (8, 8), n_features: int = 1, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Random ``(x, y)`` batches of the given sizes, from a fixed seed."""
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(n, n_features, generator=generator), torch.randn(n, 1, generator=generator))
        for n in sizes
    ]


class LossLog(Callback):
    """Every training step's loss, kept in checkpoints so that a resumed run has the whole list."""

    state_access = {"batch.loss": READ}

    def __init__(self) -> None:
        self.losses: list[float] = []

    @on(BatchEnd, phase=TrainingPhase)
    def record(self, event: Event, phase: Phase, learner: Any) -> None:
        self.losses.append(float(learner.batch.loss))

    def state_dict(self) -> dict[str, Any]:
        return {"losses": list(self.losses)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.losses = [float(x) for x in state["losses"]]
