"""Executors run a plan: the handlers of one (event, phase), in an order the graph allows.

The protocol is one method, ``run(plan, event, phase)``. An executor must:

- call every ``(handler, view)`` in ``plan.calls`` as ``handler(event, phase, view)``, never
  starting a handler before its ``plan.predecessors`` have finished;
- on a ``CancelSignal``, set ``signal.origin`` to the handler's label, start no further
  handler of the event and re-raise the signal;
- accept empty plans: ``FitBegin`` and ``FitEnd`` always reach the executor, even when no
  callback handles them, so that it can set up and tear down (a thread pool, a report);
- on any other exception, add a note naming the handler, event and phase (``add_handler_note``)
  and re-raise it.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from cadence.errors import CancelSignal
from cadence.events import Event
from cadence.graph import Plan
from cadence.phases import Phase

__all__ = ["Executor", "SerialExecutor", "add_handler_note"]


@runtime_checkable
class Executor(Protocol):
    """Runs the handlers of a plan.

    Extending:
        1. Write a class with ``run(self, plan, event, phase) -> None``.
        2. Respect ``plan.predecessors``: a handler starts only after those have finished.
           ``plan.accesses`` tells what each handler's callback may touch, for deciding what
           can overlap; keep what you precompute per plan in ``plan.cache`` (plans are rebuilt,
           and the cache with them, whenever callbacks change).
        3. Handle failures as ``SerialExecutor`` does: ``signal.origin = plan.labels[i]`` then
           re-raise a ``CancelSignal``; ``add_handler_note(exc, plan, i, event, phase)`` then
           re-raise any other exception.
        4. Pass it as ``Learner(..., executor=YourExecutor())``; it stays in place when
           callbacks are added, removed or replaced.
    """

    def run(self, plan: Plan, event: Event, phase: Phase) -> None: ...


def add_handler_note(exc: BaseException, plan: Plan, position: int, event: Event, phase: Phase) -> None:
    """Note on ``exc`` which handler raised it, at which event and phase."""
    exc.add_note(
        f"Raised by {plan.labels[position]} while handling {type(event).__name__} in "
        f"{type(phase).__name__}."
    )


class SerialExecutor:
    """Runs the handlers one after another in plan order (the default).

    Example:
        >>> from cadence.testing import make_test_learner
        >>> learner = make_test_learner(executor=SerialExecutor())
        >>> learner.fit(1) is None
        True
    """

    def run(self, plan: Plan, event: Event, phase: Phase) -> None:
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
