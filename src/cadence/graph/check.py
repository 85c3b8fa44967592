"""Every declaration error of a list of callbacks, without training: what
``python -m cadence check`` reports.

Building a learner stops at the first error. Here each callback's own declarations are
checked alone, then the list as a whole (a second checkpoint saver, ``cbstate`` entries
nothing writes, ``run_after`` cycles), setting aside each callback found at fault (the
savers after the first, a reader of missing state) so that the others are still checked, and then every (event, phase) plan of every phase defined so far
(write conflicts, cycles), custom phases included; an error several plans share is reported
once.
"""

from __future__ import annotations

from collections.abc import Sequence

from cadence.callback import Callback, callback_labels
from cadence.checkpointing.saver import saver_problems
from cadence.errors import CadenceError, CycleError, MissingStateError
from cadence.graph.builder import CallbackGraph
from cadence.phases import Phase

__all__ = ["find_errors"]


def find_errors(callbacks: Sequence[Callback]) -> list[CadenceError]:
    """The declaration errors of ``callbacks``, each once, in the order a build meets them;
    an error that several plans share is reported at the first, with a note for each other
    (``"Also at BatchEnd in ValidationPhase."``).

    Example:
        >>> from cadence import READ, WRITE, Callback, on
        >>> from cadence.events import BatchEnd
        >>> class Doubler(Callback):
        ...     state_access = {"batch.loss": WRITE}
        ...     @on(BatchEnd)
        ...     def double(self, event, phase, learner): ...
        >>> class Typo(Callback):
        ...     def __init__(self):
        ...         self.state_access = {"batch.lost": READ}
        >>> class Reader(Callback):
        ...     state_access = {"cbstate.history": READ}
        >>> for error in find_errors([Doubler(), Doubler(), Typo(), Reader()]):
        ...     print(f"{type(error).__name__}: {str(error).splitlines()[0]}")
        DeclarationError: Typo.state_access declares 'batch.lost', which is not a batch field. ...
        MissingStateError: Reader reads cbstate.history, but no callback writes it.
        ConflictError: Write conflict between Doubler#1 and Doubler#2 at BatchEnd in TrainingPhase:
    """
    errors: list[CadenceError] = []
    kept: list[Callback] = []
    for callback in callbacks:
        try:
            CallbackGraph([callback])
        except MissingStateError:
            kept.append(callback)  # another callback may write it: checked with all of them below
        except CadenceError as error:
            errors.append(error)
        else:
            kept.append(callback)
    aside: set[int] = set()
    for problem, at_fault in saver_problems(kept):  # a second saver, a run_after that names it
        errors.append(problem)
        aside.update(at_fault)
    kept = [cb for i, cb in enumerate(kept) if i not in aside]
    while True:
        try:
            graph = CallbackGraph(kept)
            break
        except MissingStateError as error:
            errors.append(error)
            reader = next((i for i, label in enumerate(callback_labels(kept)) if str(error).startswith(f"{label} reads ")), None)
            if reader is None:
                return errors
            del kept[reader]
        except CycleError as error:  # of run_after: no plan can be ordered
            errors.append(error)
            return errors
    first: dict[str, CadenceError] = {}  # a plan's error without its "at <event> in <phase>"
    views = [None] * len(kept)
    for kind in _phases():
        for event in kind.events:
            try:
                graph.plan(event, kind, views)
            except CadenceError as error:
                where = f" at {event.__name__} in {kind.__name__}"
                key = f"{type(error).__name__}: {str(error).replace(where, '', 1)}"
                if key in first:
                    first[key].add_note(f"Also{where}.")
                else:
                    first[key] = error
                    errors.append(error)
    return errors


def _phases() -> list[type[Phase]]:
    """``Phase`` and every subclass defined so far, bases first."""
    found: list[type[Phase]] = []
    pending: list[type[Phase]] = [Phase]
    while pending:
        kind = pending.pop(0)
        if kind not in found:
            found.append(kind)
            pending.extend(kind.__subclasses__())
    return found
