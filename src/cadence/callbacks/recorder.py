"""Recorder: counts epochs and steps per phase in ``cbstate.history``."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, fields
from typing import Any

from cadence import WRITE, Callback, on
from cadence.events import BatchEnd, EpochBegin, EpochEnd, Event
from cadence.phases import Phase

__all__ = ["History", "Recorder"]


@dataclass(slots=True)
class History:
    """Progress of one phase.

    Attributes:
        epochs: Epochs completed (cancelled ones included: their ``EpochEnd`` fired).
        steps: Batches completed over all epochs (cancelled batches are not counted).
        steps_in_epoch: Batches completed in the current (or last) epoch.
    """

    epochs: int = 0
    steps: int = 0
    steps_in_epoch: int = 0


class Recorder(Callback):
    """Keeps a ``History`` per phase in ``cbstate.history`` (a dict keyed by phase instance).

    Example:
        >>> from cadence.phases import TrainingPhase
        >>> from cadence.testing import make_test_learner
        >>> learner = make_test_learner(Recorder(), n_batches=4)
        >>> _ = learner.fit(2)
        >>> learner.cbstate.history[TrainingPhase()]
        History(epochs=2, steps=8, steps_in_epoch=4)
    """

    state_access = {"cbstate.history": WRITE}
    reset_when = "learner"

    def __init__(self) -> None:
        self._history: defaultdict[Phase, History] = defaultdict(History)

    # Handlers count through ``self._history``: the very dict published as cbstate.history
    # (shared in init, restored in place by load_state_dict), reached without the view.

    def init(self, learner: Any) -> None:
        if "history" not in learner.cbstate:
            # A history of its own for this learner: one this Recorder counted in another
            # learner stays that learner's (the counts so far are carried over, until a reset).
            history = defaultdict(History, {p: History(h.epochs, h.steps, h.steps_in_epoch) for p, h in self._history.items()})
            learner.cbstate.history = self._history = history
        else:
            self._history = learner.cbstate.history

    @on(EpochBegin)
    def epoch_begin(self, event: Event, phase: Phase, learner: Any) -> None:
        self._history[phase].steps_in_epoch = 0

    @on(BatchEnd)
    def batch_end(self, event: Event, phase: Phase, learner: Any) -> None:
        history = self._history[phase]
        history.steps += 1
        history.steps_in_epoch += 1

    @on(EpochEnd)
    def epoch_end(self, event: Event, phase: Phase, learner: Any) -> None:
        self._history[phase].epochs += 1

    def reset(self) -> None:
        """A fit in another learner counts from zero: every phase's history is emptied (the
        new learner's: ``init`` gave it a history of its own). A second fit of the same learner
        counts on: the history is the learner's step axis (loggers write at its steps, and
        continue them)."""
        self._history.clear()

    def state_dict(self) -> dict[str, Any]:
        """Each phase's history as plain data: ``{"history": {"module.PhaseClass": [epochs,
        steps, steps_in_epoch]}}``.

        Example:
            >>> from cadence.testing import make_test_learner
            >>> recorder = Recorder()
            >>> _ = make_test_learner(recorder, n_batches=2).fit(1)
            >>> recorder.state_dict()["history"]["cadence.phases.TrainingPhase"]
            [1, 2, 2]
        """
        saved: dict[str, list[int]] = {}
        first: dict[str, Phase] = {}
        for phase, history in self._history.items():
            key = _name(type(phase))
            if key in saved:
                raise ValueError(_two_phases(first[key], phase))
            first[key] = phase
            saved[key] = [history.epochs, history.steps, history.steps_in_epoch]
        return {"history": saved}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned, in place (the same ``cbstate.history``)."""
        classes = _phase_classes()
        restored: dict[Phase, History] = {}
        for key, (epochs, steps, steps_in_epoch) in state["history"].items():
            if key not in classes:
                raise ValueError(
                    f"Recorder.load_state_dict: the history names the phase {key}, which is not "
                    f"defined; import the module that defines it before loading."
                )
            restored[_make(classes[key])] = History(int(epochs), int(steps), int(steps_in_epoch))
        self._history.clear()
        self._history.update(restored)


def _name(kind: type) -> str:
    return f"{kind.__module__}.{kind.__qualname__}"


def _two_phases(a: Phase, b: Phase) -> str:
    name = type(a).__name__
    differing = [f for f in fields(a) if getattr(a, f.name) != getattr(b, f.name)]
    example = "..."
    if differing:
        field = differing[0]
        example = f"{field.name}: {_type_name(field.type)} = {getattr(b, field.name)!r}"
    return (
        f"Recorder.state_dict: cbstate.history has two {name} phases with different fields, {a!r} "
        f"and {b!r}; a checkpoint keeps one history per phase class, restored to {name}(). Give "
        f"each variant a class of its own whose fields default to its values, e.g. "
        f"@dataclass(frozen=True) class Other{name}({name}): {example}; and run Other{name}()."
    )


def _type_name(annotation: object) -> str:
    return annotation if isinstance(annotation, str) else getattr(annotation, "__name__", repr(annotation))


def _make(kind: type[Phase]) -> Phase:
    try:
        return kind()
    except TypeError as error:
        raise ValueError(
            f"Recorder.load_state_dict: the history names the phase {_name(kind)}, which cannot be "
            f"created without arguments ({error}); Recorder restores each phase's history to "
            f"{kind.__name__}(). Give every field of {kind.__name__} a default value."
        ) from None


def _phase_classes() -> dict[str, type[Phase]]:
    found: dict[str, type[Phase]] = {}
    pending: list[type[Phase]] = [Phase]
    while pending:
        kind = pending.pop()
        found[_name(kind)] = kind
        pending.extend(kind.__subclasses__())
    return found
