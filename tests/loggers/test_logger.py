"""LoggerCallback: its repr shows the backends and the callback's own arguments."""

from __future__ import annotations

from cadence import LogConfig, LogHistograms, LogHyperparams, LogMetrics
from cadence.loggers import CSVLogger, TensorBoardLogger
from cadence.loggers.logger import LoggerCallback


def test_the_repr_shows_the_backends_and_the_arguments_that_differ_from_their_defaults() -> None:
    csv_file, tensorboard = CSVLogger("m.csv"), TensorBoardLogger("tb")
    assert repr(LogMetrics(csv_file, every=50)) == "LogMetrics(CSVLogger('m.csv'), every=50)"
    assert repr(LogMetrics(csv_file, tensorboard)) == "LogMetrics(CSVLogger('m.csv'), TensorBoardLogger('tb'))"
    assert repr(LogHistograms(tensorboard, every=10, bins=5)) == "LogHistograms(TensorBoardLogger('tb'), every=10, bins=5)"
    assert repr(LogHyperparams(CSVLogger())) == "LogHyperparams(CSVLogger('<run folder>/metrics.csv'))"
    assert repr(LogConfig(csv_file, hparams={"batch_size": 8})) == "LogConfig(CSVLogger('m.csv'), hparams={'batch_size': 8})"

    class LogImages(LoggerCallback):  # the base's constructor: backends as one argument
        pass

    assert repr(LogImages([tensorboard])) == "LogImages((TensorBoardLogger('tb'),))"
