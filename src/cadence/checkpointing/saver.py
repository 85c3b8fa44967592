"""The callback that saves a fit's checkpoints and the fit it saves, as each sees the other:
two protocols, so that ``cadence.checkpointing.resume`` drives ``Checkpointer`` without importing
``cadence.callbacks`` and ``Checkpointer`` reads the fit without importing ``resume``; and the
checks that keep a learner to one such callback, run when the learner is built."""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeGuard, runtime_checkable

from cadence.callback import Callback, callback_labels
from cadence.errors import CadenceError, CycleError, DeclarationError
from cadence.phases import Phase

__all__ = ["CheckpointSaver", "FitProgress", "check_savers", "find_saver", "saver_problems"]

_MEMBERS = ("run_id", "folder", "extra", "attach_run", "detach_run", "check_resume")  # CheckpointSaver's


class FitProgress(Protocol):
    """One ``fit`` as its saver sees it (``cadence.checkpointing.resume.FitRun`` implements it).

    Attributes:
        epoch: Index of the current training epoch, from 0, over the whole run.
        step: Training batches drawn so far in the run.
        interrupted: ``"SIGTERM"`` or ``"SIGINT"`` once one arrived, else None.
        saved: The last checkpoint written during this fit; the saver sets it.
    """

    epoch: int
    step: int
    interrupted: str | None
    saved: Path | None

    def ends_epoch(self, phase: Phase) -> bool:
        """Whether ``EpochEnd`` of ``phase`` completes a whole epoch (validation included)."""
        ...

    def capture(self, *, epoch_end: bool) -> tuple[dict[str, Any], dict[str, Any]]:
        """What a checkpoint taken now holds: ``(state, meta)``."""
        ...


@runtime_checkable
class CheckpointSaver(Protocol):
    """The callback that saves a fit's checkpoints, as ``FitRun`` sees it (``Checkpointer``).

    Extending:
        1. Subclass ``Callback`` and give it a ``folder`` (where ``resume="latest"``
           looks) and an ``extra`` (name -> object with ``state_dict()``/``load_state_dict()``,
           saved and restored with the learner's state).
        2. Implement ``attach_run(run)``: called when ``fit`` starts, before ``FitBegin``, with
           the ``FitProgress`` (a ``FitRun``) whose ``capture()`` the callback then saves.
        3. Implement ``detach_run(run)``: called when ``fit`` ends, before ``FitEnd``.
        4. Give it a ``run_id`` attribute, None at first: ``FitRun`` sets it when a fit starts
           to the run the fit's checkpoints belong to (``cadence.checkpointing.folder``), and
           reads it at the saver's next fit in the same learner, which continues that run.
        5. Implement ``check_resume(resume)``: called when ``fit(resume=...)`` starts, before
           it looks in ``folder``; raise ``CheckpointError`` for a resume that could never
           find this saver's checkpoints (``Checkpointer`` refuses ``"latest"`` in an unnamed
           run folder, which is new at every launch).
        6. A learner takes one saver (``check_savers``).
    """

    run_id: str | None

    @property
    def folder(self) -> Path: ...

    @property
    def extra(self) -> Mapping[str, Any]: ...

    def attach_run(self, run: FitProgress) -> None: ...

    def detach_run(self, run: FitProgress) -> None: ...

    def check_resume(self, resume: str | os.PathLike[str]) -> None: ...


def check_savers(callbacks: Sequence[Callback]) -> None:
    """Refuse what a learner's checkpoint saver cannot be combined with, with the fix: a second
    saver, and a callback whose ``run_after`` names the saver while the saver runs after it
    (``Checkpointer`` runs after every other callback), which would otherwise surface as a
    bare ``CycleError``.

    Raises:
        DeclarationError: more than one saver.
        CycleError: a callback's ``run_after`` names a saver that runs after it.
    """
    problems = saver_problems(callbacks)
    if problems:
        raise problems[0][0]


def saver_problems(callbacks: Sequence[Callback]) -> list[tuple[CadenceError, list[int]]]:
    """Every error ``check_savers`` would raise one of, each with the positions of the
    callbacks at fault (the savers after the first; a callback whose ``run_after`` names the
    saver), so that ``python -m cadence check`` can set them aside and check the rest."""
    savers = [(i, cb) for i, cb in enumerate(callbacks) if _is_saver(cb)]
    if not savers:
        return []
    labels = callback_labels(callbacks)
    problems: list[tuple[CadenceError, list[int]]] = []
    if len(savers) > 1:
        # Their reprs, not their folders: a folder in an unnamed run folder would create it.
        found = ", ".join(labels[i] + "(" + repr(cb).partition("(")[2] for i, cb in savers)
        kind = type(savers[0][1]).__name__
        error: CadenceError = DeclarationError(
            f"A learner takes one {kind}; got {found}. Keep one: it saves the whole learner "
            f"(model, optimizer, every callback's state), and its every_epochs and every_steps "
            f"can both be set, e.g. {kind}(\"checkpoints\", every_epochs=1, every_steps=500)."
        )
        problems.append((error, [i for i, _ in savers[1:]]))
    index, saver = savers[0]
    kind = type(saver).__name__
    others = {i for i, _ in savers[1:]}
    for i, callback in enumerate(callbacks):
        named = next((t for t in _types(callback.run_after) if isinstance(saver, t)), None)
        if i == index or i in others or named is None:
            continue
        back = next((t for t in _types(callbacks[index].run_after) if isinstance(callback, t)), None)
        if back is None:
            continue
        why = (
            f"{kind}.run_after includes Callback: it runs after every other callback, so that a "
            f"checkpoint holds what they all did at that event"
            if back is Callback
            else f"{kind}.run_after includes {back.__name__}"
        )
        error = CycleError(
            f"{labels[i]}.run_after includes {named.__name__}, which matches the {kind}, but "
            f"{why}; {labels[i]} cannot also run after it. Remove {named.__name__} from "
            f"{labels[i]}.run_after; to use a checkpoint it saved, handle a later event (the next "
            f"BatchBegin, or FitEnd) and look in {kind}.folder."
        )
        problems.append((error, [i]))
    return problems


def _is_saver(callback: object) -> TypeGuard[CheckpointSaver]:
    # Looked up statically: isinstance() with a runtime Protocol would read the ``folder``
    # property, and a Checkpointer's creates the run folder. Builds run this per callback.
    return hasattr(type(callback), "attach_run") and all(_has(callback, name) for name in _MEMBERS)


def _has(obj: object, name: str) -> bool:
    try:
        inspect.getattr_static(obj, name)
    except AttributeError:
        return False
    return True


def _types(run_after: object) -> tuple[type, ...]:
    # A malformed run_after is the graph's to report, with its own message.
    if not isinstance(run_after, (tuple, list)):
        return ()
    return tuple(t for t in run_after if isinstance(t, type))


def find_saver(callbacks: Sequence[Callback]) -> CheckpointSaver | None:
    """The learner's saver, or None; ``check_savers`` first (the learner checks at build, a fit
    checks again, cheaply)."""
    check_savers(callbacks)
    return next((cb for cb in callbacks if _is_saver(cb)), None)
