"""The executor protocol, and the helpers both built-in executors share.

The protocol is one method, ``run(plan, event, phase)``. An executor must:

- call every ``(handler, view)`` in ``plan.calls`` as ``handler(event, phase, view)``, never
  starting a handler before its ``plan.predecessors`` have finished, and never running two
  handlers at once when their ``plan.accesses`` overlap with a write (``NoConflict`` pairs
  have no edge in ``plan.predecessors`` yet must not overlap either);
- on a ``CancelSignal``, set ``signal.origin`` to the handler's label, start no further
  handler of the event and re-raise the signal;
- accept empty plans: ``FitBegin`` and ``FitEnd`` always reach the executor, even when no
  callback handles them, so that it can set up and tear down (a thread pool, a report);
- on any other exception, add a note naming the handler, event and phase (``add_handler_note``)
  and re-raise it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from cadence.access import AccessSet, overlaps
from cadence.events import Event
from cadence.graph import Plan
from cadence.phases import Phase

__all__ = ["Executor", "Schedule", "add_handler_note", "conflicting"]


@runtime_checkable
class Executor(Protocol):
    """Runs the handlers of a plan.

    Extending:
        1. Write a class with ``run(self, plan, event, phase) -> None``.
        2. Respect ``plan.predecessors``: a handler starts only after those have finished.
           ``plan.accesses`` tells what each handler's callback may touch; handlers whose
           accesses overlap with a write must not run at the same time
           (``Schedule.of(plan)`` computes what may). Keep what you
           precompute per plan in ``plan.cache`` (plans are rebuilt, and the cache with them,
           whenever callbacks change).
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


def conflicting(a: AccessSet, b: AccessSet) -> bool:
    """Whether two declarations conflict: one writes a path that overlaps one the other reads
    or writes. Handlers of conflicting callbacks never run at the same time.

    Example:
        >>> from cadence import READ, WRITE
        >>> from cadence.access import parse_state_access
        >>> logger = parse_state_access("Logger", {"batch.loss": READ})
        >>> scaler = parse_state_access("Scaler", {"batch": WRITE})
        >>> conflicting(logger, scaler), conflicting(logger, logger)
        (True, False)
    """
    return any(overlaps(w, p) for w in a.writes for p in b.all()) or any(
        overlaps(w, p) for w in b.writes for p in a.reads
    )


@dataclass(frozen=True, slots=True)
class Schedule:
    """Which handlers of a plan wait for which; computed once per plan.

    Attributes:
        waits_for: Per handler, the handlers that must finish before it starts: the plan's
            edges plus one from each earlier conflicting handler, transitively reduced.
        successors: Per handler, the handlers that wait for it directly.
        ancestors: Per handler, a bit mask of every handler that finishes before it starts.
    """

    waits_for: tuple[tuple[int, ...], ...]
    successors: tuple[tuple[int, ...], ...]
    ancestors: tuple[int, ...]

    @classmethod
    def of(cls, plan: Plan) -> Schedule:
        """Build the schedule of ``plan`` (whose order is a topological order of its edges)."""
        ancestors: list[int] = []
        waits_for: list[tuple[int, ...]] = []
        successors: list[list[int]] = [[] for _ in plan.calls]
        for j, access in enumerate(plan.accesses):
            before = set(plan.predecessors[j])
            before.update(i for i in range(j) if conflicting(plan.accesses[i], access))
            mask = 0
            for i in before:
                mask |= ancestors[i] | 1 << i
            ancestors.append(mask)
            direct = tuple(sorted(i for i in before if not any(ancestors[k] >> i & 1 for k in before)))
            waits_for.append(direct)
            for i in direct:
                successors[i].append(j)
        return cls(tuple(waits_for), tuple(tuple(s) for s in successors), tuple(ancestors))

    def may_overlap(self, i: int, j: int) -> bool:
        """Whether handlers ``i`` and ``j`` may run at the same time."""
        low, high = sorted((i, j))
        return low != high and not self.ancestors[high] >> low & 1

    def any_may_overlap(self, members: int) -> bool:
        """Whether two of the handlers in the bit mask ``members`` may run at the same time."""
        for j in range(members.bit_length()):
            if members >> j & 1 and members & ((1 << j) - 1) & ~self.ancestors[j]:
                return True
        return False
