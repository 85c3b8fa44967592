"""cadence: a PyTorch training loop whose callbacks are safe to combine."""

from cadence.access import READ, WRITE
from cadence.callback import Callback, NoConflict, RunFirst, Unresolvable, on
from cadence.errors import (
    CadenceError,
    CancelBatch,
    CancelEpoch,
    CancelFit,
    CancelSignal,
    ConflictError,
    CycleError,
    DeclarationError,
    MissingStateError,
    ProtectedAccessError,
)
from cadence.executors import SerialExecutor
from cadence.learner import Learner
from cadence.callbacks.metrics import Metrics
from cadence.callbacks.recorder import History, Recorder

__all__ = [
    "READ",
    "WRITE",
    "CadenceError",
    "Callback",
    "CancelBatch",
    "CancelEpoch",
    "CancelFit",
    "CancelSignal",
    "ConflictError",
    "CycleError",
    "DeclarationError",
    "History",
    "Learner",
    "Metrics",
    "MissingStateError",
    "NoConflict",
    "ProtectedAccessError",
    "Recorder",
    "RunFirst",
    "SerialExecutor",
    "Unresolvable",
    "on",
]
