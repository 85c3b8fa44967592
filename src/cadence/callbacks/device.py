"""ToDevice: puts the model, its optimizer state and every batch on one device."""

from __future__ import annotations

from typing import Any

import torch

from cadence import WRITE, Callback, RunFirst, Unresolvable, on
from cadence.batches import map_tensors
from cadence.events import BatchBegin, EpochBegin, Event, FitBegin
from cadence.phases import Phase

__all__ = ["ToDevice"]

_MODEL = {"model": WRITE, "optimizer": WRITE}
_BATCH = {"batch.x": WRITE, "batch.y": WRITE}


class ToDevice(Callback):
    """Moves the model to ``device`` at ``FitBegin`` and at each ``EpochBegin`` (a no-op once it
    is there; it serves ``validate()``, ``predict()`` and ``lr_find()`` before any ``fit``), and
    each batch's ``x`` and ``y`` at ``BatchBegin`` (tensors, and lists, tuples and dicts of them,
    ``cadence.batches.map_tensors``). Each handler declares what it writes: the model and the
    optimizer (``move_model``), or ``batch.x`` and ``batch.y`` (``batch_begin``).

    ``Module.to`` moves parameters in place, so the optimizer keeps its parameters; any
    optimizer state that exists already (a resumed Adam, say) is moved next to its parameter.
    The optimizer is never rebuilt, so its state survives epochs (FluxTraining's ``ToDevice``
    rebuilt it every epoch and leaked GPU memory).

    Ordering: ``ToDevice`` runs before any other callback that writes the same state at the
    same event (``resolve_conflict`` answers ``RunFirst(self)``): every other handler sees the
    model and the batch on the device, e.g. ``Scheduler`` and ``MixedPrecision``.

    Args:
        device: A ``torch.device`` or its name, e.g. ``"cuda"``, ``"cuda:1"``, ``"cpu"``.

    Example:
        >>> from cadence.testing import make_test_learner
        >>> learner = make_test_learner(ToDevice("cpu"))
        >>> _ = learner.fit(1)
        >>> learner.model.weight.device
        device(type='cpu')
    """

    state_access = {**_MODEL, **_BATCH}  # each handler declares its part

    def __init__(self, device: torch.device | str | int) -> None:
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError):
            raise ValueError(
                f"ToDevice(device=...) expects a torch.device or a name such as 'cuda', 'cuda:1' "
                f"or 'cpu'; got {device!r}."
            ) from None
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                f"ToDevice({str(self.device)!r}): CUDA is not available here. Pick the device at "
                f"run time, e.g. ToDevice('cuda' if torch.cuda.is_available() else 'cpu')."
            )
        # Copies to the CPU must finish before the host reads them, so only those block.
        self._non_blocking = self.device.type != "cpu"

    @on(FitBegin, access=_MODEL)
    @on(EpochBegin, access=_MODEL)  # epochs outside fit: validate(), predict(), lr_find(), learner.epoch()
    def move_model(self, event: Event, phase: Phase, learner: Any) -> None:
        learner.model.to(self.device)
        for param, state in learner.optimizer.state.items():
            for key, value in state.items():
                # A non-capturable optimizer keeps its "step" counter on the CPU; leave it there.
                if isinstance(value, torch.Tensor) and (key != "step" or value.device.type != "cpu"):
                    state[key] = value.to(param.device)

    @on(BatchBegin, access=_BATCH)
    def batch_begin(self, event: Event, phase: Phase, learner: Any) -> None:
        batch, move = learner.batch, self._move
        batch.x = map_tensors(move, batch.x)
        batch.y = map_tensors(move, batch.y)

    def _move(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(self.device, non_blocking=self._non_blocking)

    def resolve_conflict(self, other: Callback) -> Any:
        if isinstance(other, ToDevice):
            return Unresolvable()
        return RunFirst(self)

    def __repr__(self) -> str:
        return f"ToDevice({str(self.device)!r})"
