"""Asking two callbacks how to order their write/write conflict, once per pair.

cadence asks ``a.resolve_conflict(b)``, then ``b.resolve_conflict(a)`` (Python's binary-operator
protocol): one answer is enough, two must agree. ``NotImplemented`` from both is a
``ConflictError`` that shows the method to write; ``Unresolvable()`` is one that says to remove a
callback.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cadence.access import Path, dotted
from cadence.callback import Callback, NoConflict, Resolution, RunFirst, Unresolvable
from cadence.errors import ConflictError, DeclarationError
from cadence.events import Event
from cadence.phases import Phase

__all__ = ["Resolver"]


class Resolver:
    """Resolves write/write conflicts between the callbacks of one graph; answers are cached
    per pair, so each callback's ``resolve_conflict`` is asked once per other callback."""

    def __init__(self, callbacks: Sequence[Callback], labels: Sequence[str]) -> None:
        self.callbacks = tuple(callbacks)
        self.labels = tuple(labels)
        self._answers: dict[tuple[int, int], Resolution] = {}

    def first(
        self, i: int, j: int, event: type[Event], phase: type[Phase], path_i: Path, path_j: Path
    ) -> int | None:
        """Ask callbacks ``i`` and ``j`` (which write ``path_i`` and ``path_j`` at ``event`` in
        ``phase``) how to order; return the index that runs first, or None for any order.

        Raises:
            ConflictError: no answer, disagreeing answers, or ``Unresolvable()``.
            DeclarationError: an answer that is not a resolution.
        """
        key = (i, j)
        if key not in self._answers:
            self._answers[key] = self._ask_both(i, j, event, phase, path_i, path_j)
        answer = self._answers[key]
        if isinstance(answer, RunFirst):
            return i if answer.callback is self.callbacks[i] else j
        return None

    def _ask_both(
        self, i: int, j: int, event: type[Event], phase: type[Phase], path_i: Path, path_j: Path
    ) -> Resolution:
        a, b = self.callbacks[i], self.callbacks[j]
        answer_a = self._ask(i, j)
        answer_b = self._ask(j, i)
        where = f"at {event.__name__} in {phase.__name__}"
        if answer_a is NotImplemented and answer_b is NotImplemented:
            na, nb = self.labels[i], self.labels[j]
            same = a.__class__ is b.__class__  # a throttled Writer is still a Writer
            raise ConflictError(
                f"Write conflict between {na} and {nb} {where}:\n"
                f"  - {na} writes {dotted(path_i)}\n  - {nb} writes {dotted(path_j)}\n"
                + (
                    f"Two {type(a).__name__} callbacks write the same state; keep one of them.\n"
                    if same
                    else ""
                )
                + f"Nothing orders them. Implement resolve_conflict on one of them, e.g.\n\n"
                f"    def resolve_conflict(self, other):  # in {type(a).__name__}\n"
                f"        if isinstance(other, {type(b).__name__}):\n"
                f"            return RunFirst(self)  # or RunFirst(other), NoConflict(), Unresolvable()\n"
                f"        return NotImplemented\n\n"
                f"or add run_after = ({type(a).__name__},) to {type(b).__name__}."
            )
        if answer_a is not NotImplemented and answer_b is not NotImplemented and answer_a != answer_b:
            raise ConflictError(
                f"{self.labels[i]} and {self.labels[j]} disagree on their order {where}: "
                f"{self.labels[i]}.resolve_conflict returned {self._show(answer_a)} and "
                f"{self.labels[j]}.resolve_conflict returned {self._show(answer_b)}. Make them agree, "
                f"or return NotImplemented from one."
            )
        answer: Resolution = answer_a if answer_a is not NotImplemented else answer_b
        if isinstance(answer, Unresolvable):
            raise ConflictError(
                f"{self.labels[i]} and {self.labels[j]} cannot be used together: both write "
                f"{dotted(path_i)} {where} and resolve_conflict says Unresolvable(). Remove one of them."
            )
        return answer

    def _ask(self, i: int, j: int) -> Any:
        answer = self.callbacks[i].resolve_conflict(self.callbacks[j])
        if answer is NotImplemented or isinstance(answer, (NoConflict, Unresolvable)):
            return answer
        if isinstance(answer, RunFirst):
            if answer.callback is self.callbacks[i] or answer.callback is self.callbacks[j]:
                return answer
            raise DeclarationError(
                f"{self.labels[i]}.resolve_conflict({self.labels[j]}) returned "
                f"RunFirst({answer.callback!r}); RunFirst must name one of the two, "
                f"RunFirst(self) or RunFirst(other)."
            )
        raise DeclarationError(
            f"{self.labels[i]}.resolve_conflict({self.labels[j]}) returned {answer!r}; return "
            f"NoConflict(), RunFirst(self), RunFirst(other), Unresolvable() or NotImplemented."
        )

    def _show(self, answer: Resolution) -> str:
        if isinstance(answer, RunFirst):
            return f"RunFirst({self.labels[self.callbacks.index(answer.callback)]})"
        return f"{type(answer).__name__}()"
