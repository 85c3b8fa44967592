"""The loop a phase runs on in a distributed fit (a ``phases.Loop``): the learner's state and
events, with the model's forward through DDP and, in training, the stop agreement just before
each optimizer step."""

from __future__ import annotations

from typing import Any

import torch

from cadence.distributed.agreement import Agreement
from cadence.events import Event
from cadence.phases import Phase
from cadence.state import Batch

__all__ = ["AgreedStep", "DistributedLoop"]


class DistributedLoop:
    """What a phase runs on in a distributed fit: the learner's state and events, with the
    model's forward through DDP and the optimizer step after the stop agreement."""

    __slots__ = ("model", "loss_fn", "optimizer", "adapter", "batch", "cbstate", "_fire")

    def __init__(self, model: torch.nn.Module, learner: Any, optimizer: Any) -> None:
        self.model, self.loss_fn, self.optimizer = model, learner.loss_fn, optimizer
        self.adapter = learner.adapter
        self.batch: Batch = learner.batch
        self.cbstate = learner.cbstate
        self._fire = learner.fire

    def fire(self, event: Event, phase: Phase) -> None:
        # A method of the loop (not the learner's, bound): the step's error notes tell a
        # handler's error from the model's by this frame.
        self._fire(event, phase)


class AgreedStep:
    """The optimizer as a training phase steps it: first the stop agreement."""

    __slots__ = ("optimizer", "agreement", "zero_grad")

    def __init__(self, optimizer: torch.optim.Optimizer, agreement: Agreement) -> None:
        self.optimizer, self.agreement, self.zero_grad = optimizer, agreement, optimizer.zero_grad

    def step(self, *args: Any, **kwargs: Any) -> Any:
        self.agreement.before_step()
        return self.optimizer.step(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name == "optimizer":  # not set yet (copy, pickle)
            raise AttributeError(name)
        return getattr(self.optimizer, name)
