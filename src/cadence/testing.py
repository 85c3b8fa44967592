"""Helpers for testing callbacks: a tiny CPU learner that converges in well under a second."""

from __future__ import annotations

from typing import Any

import torch

from cadence.callback import Callback
from cadence.learner import Learner

__all__ = ["make_test_learner", "regression_batches"]


def regression_batches(
    n_batches: int = 16, batch_size: int = 8, *, coefficient: float = 3.0, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of ``y = coefficient * x`` with ``x`` uniform in [-1, 1], from a fixed seed."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n_batches):
        x = torch.rand(batch_size, 1, generator=generator) * 2 - 1
        batches.append((x, coefficient * x))
    return batches


def make_test_learner(
    *callbacks: Callback,
    n_batches: int = 16,
    batch_size: int = 8,
    lr: float = 0.1,
    seed: int = 0,
    **learner_kwargs: Any,
) -> Learner:
    """A ``Learner`` fitting ``y = 3x`` with one linear unit and SGD, on fixed batches used for
    both training and validation. Default callbacks are off unless you pass
    ``default_callbacks=True``.

    Example:
        >>> from cadence import Recorder
        >>> learner = make_test_learner(Recorder())
        >>> _ = learner.fit(5)
        >>> abs(learner.model.weight.item() - 3.0) < 0.1
        True
    """
    torch.manual_seed(seed)
    model = torch.nn.Linear(1, 1, bias=False)
    batches = regression_batches(n_batches, batch_size, seed=seed)
    learner_kwargs.setdefault("default_callbacks", False)
    return Learner(
        model,
        torch.nn.functional.mse_loss,
        torch.optim.SGD(model.parameters(), lr=lr),
        data=(batches, batches),
        callbacks=list(callbacks),
        **learner_kwargs,
    )
