"""Loggable values are checked where they are built: a bad one is a TypeError or ValueError
with the fix in the code that built it, and never turns a backend off."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cadence import READ, LogMetrics, Metrics, Recorder
from cadence.loggers import Figure, Histogram, Hyperparameters, Image, Scalar, TensorBoardLogger, Text
from cadence.loggers.logger import LoggerCallback
from cadence.loggers.values import check_loggables, encode_png
from cadence.phases import Phase, ValidationPhase
from cadence.testing import make_test_learner


@pytest.mark.parametrize(
    ("pixels", "message"),
    [
        (np.full((4, 4), 3.0), r"Image\('sample'\): pixels must be uint8 \(0 to 255\) or floats in \[0, 1\]; got float64 from 3.0 to 3.0\. Scale them, e\.g\. Image\('sample', pixels / pixels\.max\(\)\), or convert 0\.\.255 integers: pixels\.astype\(numpy\.uint8\)"),
        (np.full((4, 4), np.nan), r"got float64 from nan to nan"),
        (np.zeros((4, 4), dtype=np.int64), r"pixels must be uint8 \(0 to 255\) or floats in \[0, 1\]; got int64\. Scale them"),
        (np.zeros((3, 8, 8)), r"Image\('sample'\): pixels must have shape \(H, W\) or \(H, W, C\) with C in 1, 3, 4; got shape \(3, 8, 8\)\. A \(C, H, W\) tensor is pixels\.permute\(1, 2, 0\)"),
        (np.zeros((0, 4)), r"got shape \(0, 4\)"),
    ],
)
def test_bad_pixels_are_refused_when_the_image_is_built(pixels: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Image("sample", pixels)


def test_encode_png_checks_its_array_the_same_way() -> None:
    with pytest.raises(ValueError, match=r"encode_png: pixels must be uint8 \(0 to 255\) or floats in \[0, 1\]; got float32 from -1\.0 to -1\.0\. Scale them, e\.g\. encode_png\(pixels / pixels\.max\(\)\)"):
        encode_png(np.full((2, 2), -1.0, dtype=np.float32))
    with pytest.raises(ValueError, match=r"encode_png: pixels must have shape \(H, W\) or \(H, W, C\) with C in 1, 3, 4; got shape \(2,\)"):
        encode_png(np.zeros(2))
    assert Image("ok", torch.ones(2, 3, 3)).png() == encode_png(np.ones((2, 3, 3)))  # a CPU tensor is an array


def test_scalars_take_numbers_and_one_element_tensors() -> None:
    assert Scalar("loss", torch.tensor(0.5)).value == 0.5 and Scalar("n", np.int64(3)).value == 3.0
    assert type(Scalar("n", 2).value) is float
    with pytest.raises(TypeError, match=r"Scalar\('loss', \.\.\.\) expects a number, e\.g\. Scalar\('loss', 0\.25\) or Scalar\('loss', float\(tensor\)\); got str: 0\.5"):
        Scalar("loss", "0.5")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"Scalar\('loss', \.\.\.\) expects one number; got 3 of them \(shape \(3,\)\)\. Log one, e\.g\. Scalar\('loss', float\(values\.mean\(\)\)\)"):
        Scalar("loss", torch.zeros(3))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r'Scalar\(name, \.\.\.\) expects a non-empty string as the name, e\.g\. Scalar\("loss", \.\.\.\); got 3'):
        Scalar(3, 0.5)  # type: ignore[arg-type]


def test_the_other_values_are_checked_too() -> None:
    with pytest.raises(TypeError, match=r"Histogram\('w'\): values must be numbers; got an array of <U1\. Pass e\.g\. tensor\.detach\(\)\.cpu\(\)\.numpy\(\)"):
        Histogram("w", np.array(["a"]))
    with pytest.raises(ValueError, match=r"Histogram\('w', bins=\.\.\.\) expects an int >= 1, e\.g\. bins=30; got 0"):
        Histogram("w", np.zeros(3), bins=0)
    with pytest.raises(TypeError, match=r"Text\('note', \.\.\.\) expects a string; got int\. Pass str\(value\)"):
        Text("note", 3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"Hyperparameters\(values\) takes names \(str\) -> bool, int, float or str; got 'layers': list\. Write e\.g\."):
        Hyperparameters({"layers": [1, 2]})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match=r"Hyperparameters\(values\) expects a dict such as"):
        Hyperparameters([("lr", 0.1)])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"Hyperparameters\(metrics=\.\.\.\) expects metric keys such as \(\"valid/loss\",\)"):
        Hyperparameters({"lr": 0.1}, metrics=(1,))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"Figure\('curve', \.\.\.\) expects a matplotlib figure \(matplotlib\.figure\.Figure, or plt\.gcf\(\)\); got ndarray"):
        Figure("curve", np.zeros(3))
    with pytest.raises(TypeError, match=r'Logger backends write Scalar, Image, Histogram, Text, Hyperparameters and Figure values \(from cadence\.loggers\); got float: 0\.5\. Wrap it, e\.g\. Scalar\("loss", 0\.5\)'):
        check_loggables([Scalar("ok", 1.0), 0.5])


class LogImage(LoggerCallback):
    """Logs an image at every validation epoch end; the second epoch's pixels are out of range."""

    state_access = {"cbstate.history": READ}

    def epoch_ended(self, phase: Phase, learner: Any) -> None:
        if isinstance(phase, ValidationPhase):
            epoch = learner.cbstate.history[phase].epochs
            pixels = np.full((4, 4), 0.5 if epoch != 2 else 3.0)
            try:
                self.log([Image("sample", pixels)], learner, phase)
            except ValueError as error:
                self.refused = str(error)


def test_a_bad_value_does_not_turn_the_backend_off(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tensorboard = TensorBoardLogger(tmp_path)
    images = LogImage([tensorboard])
    learner = make_test_learner(images, LogMetrics(tensorboard, every=1), Metrics(), Recorder(), n_batches=3)
    with caplog.at_level(logging.WARNING, logger="cadence"):
        learner.fit(3)
    assert "pixels must be uint8" in images.refused and caplog.records == []
    events = EventAccumulator(str(tmp_path / "valid"), size_guidance={"images": 0}).Reload()
    assert [e.step for e in events.Images("sample")] == [3, 9]
    assert [e.step for e in EventAccumulator(str(tmp_path / "train")).Reload().Scalars("loss_step")] == list(range(1, 10))
