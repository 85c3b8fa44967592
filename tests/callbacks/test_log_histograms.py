"""LogHistograms: the weights and gradients of the logging steps, read back with TensorBoard's
EventAccumulator and compared with the same SGD steps done by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cadence import Learner, LogHistograms, Recorder
from cadence.loggers import TensorBoardLogger


def test_the_histograms_hold_the_gradients_and_weights_of_their_step(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    x, y = torch.randn(32, 4), torch.randn(32, 3)
    batches = [(x[i : i + 8], y[i : i + 8]) for i in range(0, 32, 8)]
    weight, bias = model.weight.detach().double().clone(), model.bias.detach().double().clone()
    learner = Learner(
        model, torch.nn.functional.mse_loss, torch.optim.SGD(model.parameters(), lr=0.1), data=(batches, None),
        callbacks=[LogHistograms(TensorBoardLogger(tmp_path), every=2, bins=5), Recorder()], default_callbacks=False,
    )
    learner.fit(1)

    expected: dict[int, dict[str, np.ndarray]] = {}
    for step, (xb, yb) in enumerate(batches, start=1):  # SGD on the mean squared error, by hand
        xb, yb = xb.double(), yb.double()
        error = xb @ weight.T + bias - yb
        grad_weight, grad_bias = 2 * error.T @ xb / error.numel(), 2 * error.sum(0) / error.numel()
        weight, bias = weight - 0.1 * grad_weight, bias - 0.1 * grad_bias
        if step % 2 == 0:  # after the step: its gradients, and the weights it left
            expected[step] = {
                "gradients/weight": grad_weight.numpy(), "gradients/bias": grad_bias.numpy(),
                "weights/weight": weight.numpy(), "weights/bias": bias.numpy(),
            }
    events = EventAccumulator(str(tmp_path), size_guidance={"histograms": 0}).Reload()
    assert sorted(events.Tags()["histograms"]) == sorted(expected[2])
    for tag in expected[2]:
        logged = events.Histograms(tag)
        assert [e.step for e in logged] == [2, 4]
        for event in logged:
            values, histogram = expected[event.step][tag].ravel(), event.histogram_value
            assert histogram.num == values.size
            assert (histogram.min, histogram.max) == (pytest.approx(values.min(), abs=1e-6), pytest.approx(values.max(), abs=1e-6))
            assert histogram.sum == pytest.approx(values.sum(), rel=1e-4, abs=1e-6)
            assert histogram.sum_squares == pytest.approx((values**2).sum(), rel=1e-5, abs=1e-9)
            counts, edges = np.histogram(values, bins=5)
            assert list(histogram.bucket) == counts.tolist()
            assert list(histogram.bucket_limit) == pytest.approx(edges[1:].tolist(), rel=1e-5, abs=1e-6)
    assert not np.allclose(expected[2]["gradients/weight"], expected[4]["gradients/weight"])  # each step its own
