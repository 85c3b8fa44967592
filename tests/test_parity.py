"""Parity: Learner.fit gives bit-identical weights to the hand-written loop it replaces."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from cadence import Learner

Batches = list[tuple[torch.Tensor, torch.Tensor]]
MakeOptimizer = Callable[[torch.nn.Module], torch.optim.Optimizer]


def make_model() -> torch.nn.Module:
    torch.manual_seed(1234)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


def make_batches(seed: int) -> Batches:
    generator = torch.Generator().manual_seed(seed)
    sizes = (16, 16, 16, 5)  # an uneven last batch
    return [(torch.randn(n, 4, generator=generator), torch.randn(n, 1, generator=generator)) for n in sizes]


def hand_written(make_optimizer: MakeOptimizer, train: Batches, n_epochs: int) -> torch.nn.Module:
    model = make_model()
    optimizer = make_optimizer(model)
    loss_fn = torch.nn.functional.mse_loss
    for _ in range(n_epochs):
        for x, y in train:
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
    return model


OPTIMIZERS: dict[str, MakeOptimizer] = {
    "sgd-momentum": lambda model: torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
    "adam": lambda model: torch.optim.Adam(model.parameters(), lr=0.01),
    "default-adam": lambda model: torch.optim.Adam(model.parameters()),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_fit_matches_the_hand_written_loop_bit_for_bit(name: str) -> None:
    train, valid = make_batches(0), make_batches(1)
    expected = hand_written(OPTIMIZERS[name], train, n_epochs=3)

    model = make_model()
    optimizer = None if name == "default-adam" else OPTIMIZERS[name](model)
    learner = Learner(model, torch.nn.functional.mse_loss, optimizer, data=(train, valid))
    assert len(learner.callbacks) == 5  # the default callbacks are on
    assert learner.fit(3).stopped is None

    for (key, got), (_, want) in zip(model.state_dict().items(), expected.state_dict().items(), strict=True):
        assert torch.equal(got, want), f"{name}: {key} differs from the hand-written loop"
    # And it did train.
    assert not torch.equal(model[0].weight, make_model()[0].weight)
