"""GradientAccumulation: n micro-batches step like one batch n times larger."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
import torch

from cadence import ConflictError, Learner
from cadence.callbacks.accumulation import GradientAccumulation

Batches = list[tuple[torch.Tensor, torch.Tensor]]


def micro_batches(count: int, size: int = 8) -> Batches:
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(size, 3, generator=generator), torch.randn(size, 2, generator=generator)) for _ in range(count)]


def merged(batches: Batches, n: int) -> Batches:
    groups = [batches[i : i + n] for i in range(0, len(batches), n)]
    return [(torch.cat([x for x, _ in g]), torch.cat([y for _, y in g])) for g in groups]


def train(data: Iterable[Any], *callbacks: Any, epochs: int = 2, adam: bool = False) -> Learner:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = (
        torch.optim.Adam(model.parameters(), lr=0.01)
        if adam
        else torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    )
    learner = Learner(model, torch.nn.functional.mse_loss, optimizer, data=(data, None), callbacks=callbacks, default_callbacks=False)
    learner.fit(epochs)
    return learner


def assert_same_weights(a: Learner, b: Learner) -> None:
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_n_micro_batches_step_like_one_batch_n_times_larger() -> None:
    batches = micro_batches(12)
    assert_same_weights(train(batches, GradientAccumulation(4)), train(merged(batches, 4)))


def test_the_epochs_last_partial_group_steps_with_its_own_mean() -> None:
    batches = micro_batches(10)  # groups of 4, 4 and 2
    assert_same_weights(train(batches, GradientAccumulation(4)), train(merged(batches, 4)))


def test_one_optimizer_step_per_group() -> None:
    learner = train(micro_batches(10), GradientAccumulation(4), adam=True)
    assert float(learner.optimizer.state[learner.model.weight]["step"]) == 2 * 3


def test_n_of_one_changes_nothing() -> None:
    batches = micro_batches(3)
    a, b = train(batches, GradientAccumulation(1)), train(batches)
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))


class Unsized:
    def __init__(self, batches: Batches) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter(self.batches)


def test_without_len_a_trailing_partial_group_is_dropped_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    batches = micro_batches(10)
    with caplog.at_level(logging.WARNING, logger="cadence.callbacks.accumulation"):
        learner = train(Unsized(batches), GradientAccumulation(4))
    assert_same_weights(learner, train(merged(batches[:8], 4)))
    assert "dropped a partial group of 2 micro-batch(es) at the end of the epoch" in caplog.text


def test_two_accumulations_cannot_be_used_together() -> None:
    with pytest.raises(ConflictError, match=r"GradientAccumulation#1 and GradientAccumulation#2 cannot be used together"):
        train([], GradientAccumulation(2), GradientAccumulation(3))


@pytest.mark.parametrize("n", [0, 2.0, True, "4"])
def test_n_must_be_a_positive_int(n: Any) -> None:
    with pytest.raises(ValueError, match=r"expects the number of micro-batches per optimizer step, an int >= 1, e.g. GradientAccumulation\(4\)"):
        GradientAccumulation(n)


def test_repr() -> None:
    assert repr(GradientAccumulation(4)) == "GradientAccumulation(4)"
