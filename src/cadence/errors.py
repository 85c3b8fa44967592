"""cadence's exceptions, control-flow signals and warnings.

Two separate families of exceptions. Errors say something is wrong and how to fix it; signals
are how a callback changes the course of training and are never errors. Warnings say that a
run goes on but probably not as meant::

    Exception
    ├── CadenceError                       anything cadence rejects
    │   ├── ProtectedAccessError           a handler touched state it did not declare
    │   ├── DeclarationError (ValueError)  a malformed state_access, run_after or path
    │   ├── ConflictError                  two writers of the same state with no order
    │   ├── CycleError                     the ordering constraints form a cycle
    │   ├── MissingStateError              a cbstate entry is read but nothing writes it
    │   ├── SignalScopeError               a Cancel* signal raised where it cancels nothing
    │   ├── CheckpointError                a checkpoint cannot be written, read or used
    │   ├── DistributedError               the ranks of a distributed fit disagree, or one failed
    │   ├── LoggerError                    a logger backend failed (strict=True), or cannot write as asked
    │   ├── MissingExtraError (ImportError)  a backend's optional dependency is not installed
    │   └── SanityCheckError               (cadence.callbacks.sanity) the first batches fail
    └── CancelSignal                       control flow, not an error
        ├── CancelBatch                    skip the rest of this batch
        ├── CancelEpoch                    skip the rest of this epoch
        └── CancelFit                      end training; ``fit(...).stopped`` is the signal

    UserWarning
    └── DataWarning                        an epoch drew no batches (empty or used-up data)
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CadenceError",
    "CancelBatch",
    "CancelEpoch",
    "CancelFit",
    "CancelSignal",
    "CheckpointError",
    "ConflictError",
    "CycleError",
    "DataWarning",
    "DeclarationError",
    "DistributedError",
    "LoggerError",
    "MissingExtraError",
    "MissingStateError",
    "ProtectedAccessError",
    "SignalScopeError",
]


class CadenceError(Exception):
    """Base class of every error cadence raises for a problem the user can fix.

    Attributes:
        callbacks: For an error raised while a learner was built: the callbacks it was given,
            so that ``python -m cadence check`` can look for every other error among them.
    """

    callbacks: tuple[Any, ...] = ()


class ProtectedAccessError(CadenceError):
    """A handler read or wrote learner state outside its callback's ``state_access``.

    Deliberately not an ``AttributeError``: ``hasattr`` and ``getattr(..., default)`` must not
    swallow a missing declaration.
    """


class DeclarationError(CadenceError, ValueError):
    """A callback's declarations (``state_access``, ``run_after``, handlers) are malformed."""


class ConflictError(CadenceError):
    """Two callbacks write overlapping state at the same event and phase with no order."""


class CycleError(CadenceError):
    """The ordering constraints between callbacks form a cycle."""


class MissingStateError(CadenceError):
    """A callback reads a ``cbstate`` entry that no callback writes."""


class SignalScopeError(CadenceError):
    """A cancel signal was raised at an event where it has nothing to cancel."""


class CheckpointError(CadenceError):
    """A checkpoint cannot be written, read or used; the message names the file and the fix."""


class LoggerError(CadenceError):
    """A logger backend could not write, flush or close, and was built with ``strict=True``
    (without it, the failure is logged once and training goes on); or it cannot be used as
    asked: a fresh fit into a log that holds an earlier run's values, or no place to write."""


class MissingExtraError(CadenceError, ImportError):
    """A logger backend or plot needs an optional dependency that is not installed; the
    message gives the ``pip install 'cadence[extra]'`` line."""


class DataWarning(UserWarning):
    """The data looks wrong, though training can go on: an epoch drew no batches, because the
    data is empty or is an iterator that an earlier epoch used up. Turn it into an error with
    ``warnings.simplefilter("error", DataWarning)``."""


class DistributedError(CadenceError):
    """The processes of a distributed fit disagree (they built different plans, reached a
    checkpoint at different steps) or one of them failed; raised on every rank, or by
    ``cadence.distributed.launch``, instead of leaving the others waiting."""


class CancelSignal(Exception):
    """Base class of the control-flow signals a handler raises to change the course of training.

    Args:
        reason: Why training is being cancelled; kept as ``.reason``.

    Attributes:
        origin: ``"Callback.handler"`` that raised the signal, filled in by the executor.
    """

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.origin: str | None = None


class CancelBatch(CancelSignal):
    """Skip the rest of the current batch: no optimizer step, no ``BatchEnd``, and the batch is
    not counted. Raise it from ``BatchBegin`` to ``BackwardEnd`` (``LossBegin`` in validation);
    at ``BatchEnd`` the step is done and it is a ``SignalScopeError``."""


class CancelEpoch(CancelSignal):
    """Skip the rest of the current epoch. ``EpochEnd`` still fires, and a cancelled training
    epoch is still followed by validation."""


class CancelFit(CancelSignal):
    """End training at once. ``FitEnd`` fires and ``fit`` returns normally: its
    ``FitResult.stopped`` is this signal (``.reason`` its reason).

    Example:
        >>> signal = CancelFit("valid/loss did not improve for 3 epochs")
        >>> signal.reason
        'valid/loss did not improve for 3 epochs'
    """
