"""cadence: a PyTorch training loop whose callbacks are safe to combine."""

from cadence.access import READ, WRITE
from cadence.batches import BatchAdapter, DictBatches, TupleBatches
from cadence.callback import Callback, NoConflict, RunFirst, Unresolvable, on
from cadence.errors import (
    CadenceError,
    CancelBatch,
    CancelEpoch,
    CancelFit,
    CancelSignal,
    CheckpointError,
    ConflictError,
    CycleError,
    DataWarning,
    DeclarationError,
    DistributedError,
    LoggerError,
    MissingExtraError,
    MissingStateError,
    ProtectedAccessError,
    SignalScopeError,
)
from cadence.executors import SerialExecutor, ThreadedExecutor
from cadence.fit_result import FitResult
from cadence.inference import EvaluationPhase, PredictionPhase
from cadence.learner import Learner
from cadence.lr_finder import LRFinderPhase, LRFinderResult

# Built-in callbacks come last: they are written on the public names above.
from cadence.callbacks.recorder import History, Recorder  # isort: skip
from cadence.callbacks.metrics import Metrics, MetricSpec, MetricValues  # isort: skip
from cadence.callbacks.accumulation import GradientAccumulation  # isort: skip
from cadence.callbacks.checkpointer import Checkpointer  # isort: skip
from cadence.callbacks.clipping import GradientClipping  # isort: skip
from cadence.callbacks.device import ToDevice  # isort: skip
from cadence.callbacks.early_stopping import EarlyStopping  # isort: skip
from cadence.callbacks.lambda_callback import LambdaCallback  # isort: skip
from cadence.callbacks.metrics_printer import MetricsPrinter  # isort: skip
from cadence.callbacks.nan import StopOnNaNLoss  # isort: skip
from cadence.callbacks.plateau import ReduceLROnPlateau  # isort: skip
from cadence.callbacks.precision import MixedPrecision  # isort: skip
from cadence.callbacks.progress import ProgressPrinter  # isort: skip
from cadence.callbacks.sanity import SanityCheck, SanityCheckError  # isort: skip
from cadence.callbacks.scheduler import Scheduler  # isort: skip
from cadence.callbacks.throttle import Throttled, throttle  # isort: skip
from cadence.callbacks.timer import CallbackTimer, HandlerTime  # isort: skip
from cadence.callbacks.learning_curves import LearningCurves  # isort: skip
from cadence.callbacks.log_config import LogConfig  # isort: skip
from cadence.callbacks.log_histograms import LogHistograms  # isort: skip
from cadence.callbacks.log_hyperparams import LogHyperparams  # isort: skip
from cadence.callbacks.log_metrics import LogMetrics  # isort: skip
from cadence.callbacks.run_folder import RunFolder  # isort: skip

__all__ = [
    "READ",
    "WRITE",
    "BatchAdapter",
    "CadenceError",
    "Callback",
    "CallbackTimer",
    "CancelBatch",
    "CancelEpoch",
    "CancelFit",
    "CancelSignal",
    "CheckpointError",
    "Checkpointer",
    "ConflictError",
    "CycleError",
    "DataWarning",
    "DeclarationError",
    "DictBatches",
    "DistributedError",
    "EarlyStopping",
    "EvaluationPhase",
    "FitResult",
    "GradientAccumulation",
    "GradientClipping",
    "HandlerTime",
    "History",
    "LRFinderPhase",
    "LRFinderResult",
    "LambdaCallback",
    "Learner",
    "LearningCurves",
    "LogConfig",
    "LogHistograms",
    "LogHyperparams",
    "LogMetrics",
    "LoggerError",
    "MetricSpec",
    "MetricValues",
    "Metrics",
    "MetricsPrinter",
    "MissingExtraError",
    "MissingStateError",
    "MixedPrecision",
    "NoConflict",
    "PredictionPhase",
    "ProgressPrinter",
    "ProtectedAccessError",
    "Recorder",
    "ReduceLROnPlateau",
    "RunFirst",
    "RunFolder",
    "SanityCheck",
    "SanityCheckError",
    "Scheduler",
    "SerialExecutor",
    "SignalScopeError",
    "StopOnNaNLoss",
    "ThreadedExecutor",
    "Throttled",
    "ToDevice",
    "TupleBatches",
    "Unresolvable",
    "on",
    "throttle",
]
