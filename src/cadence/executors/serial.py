"""``SerialExecutor``: the default, runs the handlers of a plan one after another."""

from __future__ import annotations

from cadence.errors import CancelSignal
from cadence.events import Event
from cadence.executors.protocol import add_handler_note
from cadence.graph import Plan
from cadence.phases import Phase

__all__ = ["SerialExecutor"]


class SerialExecutor:
    """Runs the handlers one after another in plan order (the default).

    Example:
        >>> from cadence.testing import make_test_learner
        >>> learner = make_test_learner(executor=SerialExecutor())
        >>> learner.fit(1).stopped is None
        True
    """

    def run(self, plan: Plan, event: Event, phase: Phase) -> None:
        # ThreadedExecutor copies this loop (its inline path, and a timed variant) instead of
        # sharing one function: the call would add 20 to 40 ns, over a tenth of a two-handler event.
        position = 0
        try:
            for handler, view in plan.calls:
                handler(event, phase, view)
                position += 1
        except CancelSignal as signal:
            signal.origin = plan.labels[position]
            raise
        except Exception as exc:
            add_handler_note(exc, plan, position, event, phase)
            raise

    def __repr__(self) -> str:
        return "SerialExecutor()"
