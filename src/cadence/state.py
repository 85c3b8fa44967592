"""The learner's state containers: the current batch and the callbacks' shared state."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["Batch", "CallbackState", "clear_batch"]


@dataclass(slots=True)
class Batch:
    """The state of the batch being processed, reused from batch to batch.

    Attributes:
        x: The inputs, set before ``BatchBegin``.
        y: The targets, set before ``BatchBegin``.
        y_pred: The model's output, set before ``LossBegin``.
        loss: The loss, set before ``BackwardBegin`` (training) or ``BatchEnd`` (validation);
            detached from ``BackwardEnd`` on.

    A custom phase that needs more fields subclasses ``Batch`` (as a slotted dataclass) and names
    it in its ``batch_type``; the new fields become valid ``batch.<field>`` paths.
    """

    x: Any = None
    y: Any = None
    y_pred: Any = None
    loss: Any = None


class CallbackState:
    """Where callbacks share state: ``learner.cbstate.<name>``.

    A callback creates the entries it declares ``WRITE`` on, usually in its ``init``; other
    callbacks read them. Entries are plain attributes.

    Example:
        >>> state = CallbackState()
        >>> state.history = {}
        >>> "history" in state, "metrics" in state
        (True, False)
    """

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(
            f"cbstate has no entry {name!r} yet. The callback that writes cbstate.{name} "
            f"creates it, usually in its init(); check that it has run."
        )

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.__dict__

    def entries(self) -> dict[str, Any]:
        """Return a shallow copy of the entries, by name."""
        return dict(self.__dict__)

    def __repr__(self) -> str:
        return f"CallbackState({', '.join(sorted(self.__dict__))})"


def clear_batch(batch: Batch) -> None:
    """Set every field of ``batch`` back to its default, so that no tensor outlives its batch."""
    for field in dataclasses.fields(batch):
        if field.default is not dataclasses.MISSING:
            setattr(batch, field.name, field.default)
        elif field.default_factory is not dataclasses.MISSING:
            setattr(batch, field.name, field.default_factory())
        else:
            setattr(batch, field.name, None)
