"""Resume with the callbacks that shape the optimizer step: a run continued from any checkpoint,
in a fresh learner or in the same learner object, ends bit-identical to the uninterrupted run
and steps with the same learning rates.

``GradientAccumulation(3)`` over 5 batches per epoch has groups of 3 and 2, so checkpoints are
taken with 1 or 2 micro-batches of an open group stashed. ``Scheduler`` must continue the run's
schedule whatever its live position is when a same-object resume starts.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from cadence import READ, Callback, Learner, on
from cadence.callbacks.accumulation import GradientAccumulation
from cadence.callbacks.checkpointer import Checkpointer
from cadence.callbacks.scheduler import Scheduler
from cadence.checkpointing.files import list_checkpoints, load_checkpoint
from cadence.events import BackwardEnd, Event
from cadence.phases import Phase, TrainingPhase
from cadence.schedules import cosine, linear

N_EPOCHS = 3
N_BATCHES = 5  # per epoch: groups of 3 and 2 under GradientAccumulation(3)

Setup = Callable[[torch.optim.Optimizer], list[Callback]]

SETUPS: dict[str, Setup] = {
    "accumulation": lambda optimizer: [GradientAccumulation(3)],
    "cosine per step": lambda optimizer: [Scheduler(lr=cosine(0.05, 0.001))],
    "linear per epoch": lambda optimizer: [Scheduler(lr=linear(0.05, 0.01), unit="epoch")],
    "torch per step": lambda optimizer: [
        Scheduler(torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.05, total_steps=N_EPOCHS * N_BATCHES))
    ],
    "accumulation and cosine": lambda optimizer: [GradientAccumulation(3), Scheduler(lr=cosine(0.05, 0.001))],
}


class LrProbe(Callback):
    """The lr of group 0 at each training batch's ``BackwardEnd``, just before the optimizer step."""

    state_access = {"optimizer": READ}

    def __init__(self) -> None:
        self.seen: list[float] = []

    @on(BackwardEnd, phase=TrainingPhase)
    def look(self, event: Event, phase: Phase, learner: Any) -> None:
        self.seen.append(float(learner.optimizer.param_groups[0]["lr"]))


def make_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(4, 3, generator=generator), torch.randn(4, 2, generator=generator)) for _ in range(N_BATCHES)]


def make_learner(folder: Path, setup: str, seed: int = 0, *, saves: bool = True) -> Learner:
    """A learner of ``setup`` whose Checkpointer saves every step and every epoch (if ``saves``)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    every = {"every_steps": 1, "every_epochs": 1} if saves else {"every_steps": None, "every_epochs": None}
    callbacks = [*SETUPS[setup](optimizer), LrProbe(), Checkpointer(folder, **every, keep_last=10_000)]
    torch.manual_seed(seed)  # a resumed run must not depend on the RNG state it starts with
    batches = make_batches()
    return Learner(
        model, torch.nn.functional.mse_loss, optimizer, data=(batches, batches[:2]), callbacks=callbacks,
        default_callbacks=False,
    )


def weights(learner: Learner) -> list[torch.Tensor]:
    return [p.detach().clone() for p in learner.model.parameters()]


def probe(learner: Learner) -> LrProbe:
    found = learner.get_callback(LrProbe)
    assert isinstance(found, LrProbe)
    return found


@pytest.mark.parametrize("same_object", [False, True], ids=["fresh learner", "same learner"])
@pytest.mark.parametrize("setup", list(SETUPS))
def test_resuming_from_any_checkpoint_is_exact(tmp_path: Path, setup: str, same_object: bool) -> None:
    reference = make_learner(tmp_path / "run", setup)
    assert reference.fit(N_EPOCHS).stopped is None
    expected, lrs = weights(reference), list(probe(reference).seen)
    assert len(lrs) == N_EPOCHS * N_BATCHES and (setup == "accumulation" or len(set(lrs)) > 2)
    checkpoints = list_checkpoints(tmp_path / "run")
    assert len(checkpoints) == N_EPOCHS * N_BATCHES + N_EPOCHS  # every step, and every epoch
    saver = reference.get_callback(Checkpointer)
    assert isinstance(saver, Checkpointer)
    saver.every_steps = saver.every_epochs = None  # the resumes need not save again
    for path in checkpoints:
        # The same object resumes with whatever a finished run left in it (positions, counters).
        resumed = reference if same_object else make_learner(tmp_path / "again", setup, seed=123, saves=False)
        probe(resumed).seen.clear()
        assert resumed.fit(N_EPOCHS, resume=path).stopped is None
        assert all(torch.equal(a, b) for a, b in zip(weights(resumed), expected)), path.name
        step = load_checkpoint(path).meta["position"]["step"]
        assert probe(resumed).seen == lrs[step:], path.name


def test_mid_group_checkpoints_hold_the_open_group(tmp_path: Path) -> None:
    make_learner(tmp_path / "run", "accumulation").fit(1)
    states = {
        path.name.split("-", 2)[2]: load_checkpoint(path).state["callbacks"]["GradientAccumulation"]
        for path in list_checkpoints(tmp_path / "run")
    }
    counts = {name: (state["count"], state["seen"]) for name, state in states.items()}
    assert counts == {
        "epoch0-batch1.pt": (1, 1),
        "epoch0-batch2.pt": (2, 2),
        "epoch0-batch3.pt": (0, 3),  # the first group stepped
        "epoch0-batch4.pt": (1, 4),  # the last group, of 2, is open
        "epoch0-batch5.pt": (0, 5),
        "epoch1-batch0.pt": (0, 5),
    }
    for name, state in states.items():
        stashed = [t for t in state["stash"] if t is not None]
        assert len(stashed) == (4 if state["count"] else 0), name  # 2 weights and 2 biases
        assert all(t.device.type == "cpu" for t in stashed)


def test_a_mid_group_resume_that_drops_the_open_group_differs(tmp_path: Path) -> None:
    """The exactness above is not vacuous: losing the open group changes the weights."""
    reference = make_learner(tmp_path / "run", "accumulation")
    reference.fit(N_EPOCHS)
    path = next(p for p in list_checkpoints(tmp_path / "run") if p.name.endswith("epoch1-batch2.pt"))
    resumed = make_learner(tmp_path / "again", "accumulation", seed=123)
    accumulation = resumed.get_callback(GradientAccumulation)
    assert isinstance(accumulation, GradientAccumulation)
    restore = accumulation.load_state_dict

    def drop_the_group(state: dict[str, Any]) -> None:
        assert state["count"] == 2
        restore({**state, "count": 0, "stash": [None] * len(state["stash"])})

    accumulation.load_state_dict = drop_the_group  # type: ignore[method-assign]
    resumed.fit(N_EPOCHS, resume=path)
    assert not all(torch.equal(a, b) for a, b in zip(weights(resumed), weights(reference)))
