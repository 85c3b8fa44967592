"""ToDevice: the model moved once, batches moved at BatchBegin, optimizer state kept."""

from __future__ import annotations

from collections import namedtuple
from typing import Any

import pytest
import torch

from cadence import READ, WRITE, CancelBatch, Callback, ConflictError, Learner, on
from cadence.callbacks.device import ToDevice
from cadence.access import AccessSet
from cadence.events import BatchBegin, EpochBegin, Event
from cadence.phases import Phase, TrainingPhase
from cadence.testing import make_test_learner, regression_batches

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
Pair = namedtuple("Pair", ["a", "b"])


class BatchProbe(Callback):
    state_access = {"batch.x": READ, "batch.y": READ}

    def __init__(self) -> None:
        self.seen: list[tuple[Any, Any]] = []

    @on(BatchBegin)
    def look(self, event: Event, phase: Phase, learner: Any) -> None:
        self.seen.append((learner.batch.x, learner.batch.y))


class StopAfterLooking(BatchProbe):
    """Looks at the batch, then cancels it (the model could not take these structures)."""

    def look(self, event: Event, phase: Phase, learner: Any) -> None:
        super().look(event, phase, learner)
        raise CancelBatch


class Augment(Callback):
    """A user callback that rewrites batch.x at BatchBegin."""

    state_access = {"batch.x": WRITE}

    @on(BatchBegin, phase=TrainingPhase)
    def flip(self, event: Event, phase: Phase, learner: Any) -> None:
        learner.batch.x = -learner.batch.x


def adam_learner(*callbacks: Callback, n_batches: int = 3) -> Learner:
    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1)
    batches = regression_batches(n_batches, 4)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    return Learner(model, torch.nn.functional.mse_loss, optimizer, data=(batches, batches), callbacks=callbacks, default_callbacks=False)


def test_optimizer_state_is_kept_across_epochs_and_fits() -> None:
    learner = adam_learner(ToDevice("cpu"))
    learner.fit(2)
    state = learner.optimizer.state[learner.model.weight]
    moment = state["exp_avg"]
    assert float(state["step"]) == 6  # never reset by an epoch
    learner.fit(1)
    assert learner.optimizer.state[learner.model.weight]["exp_avg"] is moment  # updated in place
    assert float(state["step"]) == 9
    assert learner.optimizer.param_groups[0]["params"][0] is learner.model.weight


def test_batches_of_tensors_lists_tuples_and_dicts_reach_the_handlers() -> None:
    probe = StopAfterLooking()
    learner = make_test_learner(ToDevice(torch.device("cpu")), probe)
    x, y = torch.ones(2, 1), torch.zeros(2, 1)
    learner.step(TrainingPhase(), ((x, [y]), {"y": Pair(y, "tag")}))
    moved_x, moved_y = probe.seen[0]
    assert isinstance(moved_x, tuple) and isinstance(moved_x[1], list) and moved_x[0] is x
    assert isinstance(moved_y["y"], Pair) and moved_y["y"].b == "tag"


def test_runs_before_other_writers_in_either_list_order() -> None:
    for callbacks in ([Augment(), ToDevice("cpu")], [ToDevice("cpu"), Augment()]):
        plan = make_test_learner(*callbacks).explain(BatchBegin, TrainingPhase)
        assert plan.index("ToDevice.batch_begin") < plan.index("Augment.flip")
        assert "resolve_conflict says RunFirst(ToDevice)" in plan


class EpochReader(Callback):
    """Reads the batch at EpochBegin: nothing ToDevice writes there."""

    state_access = {"batch.x": READ}

    @on(EpochBegin)
    def look(self, event: Event, phase: Phase, learner: Any) -> None: ...


def test_each_handler_declares_what_it_moves() -> None:
    learner = make_test_learner(ToDevice("cpu"), EpochReader())
    (plan,) = learner.plans(EpochBegin, TrainingPhase)
    assert plan.labels == ("ToDevice.move_model", "EpochReader.look")
    assert plan.accesses[0] == AccessSet(writes=(("model",), ("optimizer",))) and plan.reasons[1] == ()
    (batch_plan,) = learner.plans(BatchBegin, TrainingPhase)
    assert batch_plan.accesses == (AccessSet(writes=(("batch", "x"), ("batch", "y"))),)


def test_two_to_device_cannot_be_used_together() -> None:
    with pytest.raises(ConflictError, match=r"ToDevice#1 and ToDevice#2 cannot be used together.*Remove one"):
        make_test_learner(ToDevice("cpu"), ToDevice("cpu"))


def test_invalid_devices_are_refused_at_construction() -> None:
    with pytest.raises(ValueError, match=r"expects a torch.device or a name such as 'cuda', 'cuda:1' or 'cpu'; got 'gpu0'"):
        ToDevice("gpu0")
    assert repr(ToDevice("cpu")) == "ToDevice('cpu')"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_cuda_without_cuda_says_how_to_choose() -> None:
    with pytest.raises(ValueError, match=r"CUDA is not available here.*ToDevice\('cuda' if torch.cuda.is_available\(\) else 'cpu'\)"):
        ToDevice("cuda")


@needs_cuda
def test_moves_model_batches_and_existing_optimizer_state_to_cuda() -> None:
    learner = adam_learner()
    learner.fit(1)  # Adam state now exists on the CPU
    weight = learner.model.weight
    probe = BatchProbe()
    learner.add_callback(ToDevice("cuda"))
    learner.add_callback(probe)
    learner.fit(1)
    assert learner.model.weight is weight and weight.device.type == "cuda"
    state = learner.optimizer.state[weight]
    assert state["exp_avg"].device.type == "cuda" and state["step"].device.type == "cpu"
    assert float(state["step"]) == 6
    assert all(x.device.type == "cuda" and y.device.type == "cuda" for x, y in probe.seen)
