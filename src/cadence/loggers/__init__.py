"""Loggers: where a run's values go, so that it can be seen in the tools users already have.

- ``backend``: open this first. The backend protocol: a backend's life in a fit (opened at
  the first write, flushed at epoch ends and before checkpoints, closed at ``FitEnd``), its
  resume (no step twice), and how its failures are reported.
- ``values``: what is logged: ``Scalar``, ``Image``, ``Histogram``, ``Text``,
  ``Hyperparameters``, ``Figure``.
- ``tensorboard``, ``mlflow``, ``csv``: the backends (``cadence[tensorboard]``,
  ``cadence[mlflow]``; CSV needs nothing); ``worker``: the thread that makes MLflow's calls.
- ``extras``: the optional dependencies, checked when a backend is built.
- ``logger``: ``LoggerCallback``, the base of the callbacks that write to backends.
- ``run``: the run folder, ``runs/<name>/``, shared by loggers, checkpoints and plots.
- ``plots``: learning curves and the ``lr`` curve as PNG (``cadence[plots]``).

The callbacks that write to backends are in ``cadence.callbacks``: ``LogMetrics``,
``LogHyperparams``, ``LogHistograms``, ``LogConfig``, ``RunFolder``, ``LearningCurves``.
Importing this package imports neither TensorBoard, MLflow nor matplotlib: each backend
imports its library when it first writes.
"""

from cadence.loggers.backend import Backend
from cadence.loggers.csv import CSVLogger
from cadence.loggers.mlflow import MLflowLogger
from cadence.loggers.run import Run
from cadence.loggers.tensorboard import TensorBoardLogger
from cadence.loggers.values import Figure, Histogram, Hyperparameters, Image, Loggable, Scalar, Text

__all__ = [
    "Backend",
    "CSVLogger",
    "Figure",
    "Histogram",
    "Hyperparameters",
    "Image",
    "Loggable",
    "MLflowLogger",
    "Run",
    "Scalar",
    "TensorBoardLogger",
    "Text",
]
