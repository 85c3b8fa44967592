"""GradientAccumulation: n micro-batches step like one batch n times larger."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from cadence import Callback, ConflictError, Learner, on
from cadence.callbacks.accumulation import GradientAccumulation
from cadence.events import BackwardEnd, BatchEnd, EpochBegin, Event
from cadence.phases import Phase, TrainingPhase

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


# ---- state for checkpoints -----------------------------------------------------------------------


class Snapshot(Callback):
    """``GradientAccumulation.state_dict()`` at ``BatchEnd`` of the ``at``-th training batch."""

    run_after = (GradientAccumulation,)

    def __init__(self, accumulation: GradientAccumulation, at: int) -> None:
        self.accumulation, self.at, self.seen = accumulation, at, 0
        self.state: dict[str, Any] = {}

    @on(BatchEnd, phase=TrainingPhase)
    def snap(self, event: Event, phase: Phase, learner: Any) -> None:
        self.seen += 1
        if self.seen == self.at:
            self.state = self.accumulation.state_dict()


def test_state_dict_holds_the_open_groups_gradient_sum_as_cpu_copies() -> None:
    batches = micro_batches(10)
    accumulation = GradientAccumulation(4)
    snapshot = Snapshot(accumulation, at=6)  # 2 micro-batches into the second group
    train(batches, accumulation, snapshot, epochs=1)
    state = snapshot.state
    assert (state["count"], state["seen"]) == (2, 6)
    # The weights after the first group's step, and the sum of the next two micro-batches' gradients.
    model = train(batches[:4], GradientAccumulation(4), epochs=1).model
    expected = [torch.zeros_like(p) for p in model.parameters()]
    for x, y in batches[4:6]:
        grads = torch.autograd.grad(torch.nn.functional.mse_loss(model(x), y), list(model.parameters()))
        for total, grad in zip(expected, grads):
            total += grad
    # Checked after the epoch: the live buffer has since been divided and stepped with, the copy not.
    assert len(state["stash"]) == 2
    for held, total in zip(state["stash"], expected):
        assert held.device.type == "cpu"
        torch.testing.assert_close(held, total, rtol=1e-6, atol=1e-7)
    # Plain enough for a weights-only load.
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    assert loaded["count"] == 2 and all(torch.equal(a, b) for a, b in zip(loaded["stash"], state["stash"]))


def test_a_fresh_callback_has_no_open_group() -> None:
    assert GradientAccumulation(3).state_dict() == {"count": 0, "seen": 0, "stash": []}


def cuda_if_available() -> list[Any]:
    needs = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
    return ["cpu", pytest.param("cuda", marks=needs)]


@pytest.mark.parametrize("device", cuda_if_available())
def test_a_loaded_group_goes_to_the_parameters_devices_and_closes_with_the_mean(device: str) -> None:
    model = torch.nn.Linear(3, 2).to(device)
    learner = SimpleNamespace(model=model)  # all the handlers use
    accumulation = GradientAccumulation(2)
    accumulation.epoch_begin(EpochBegin(data=[None] * 4), TrainingPhase(), learner)
    saved = [torch.ones(2, 3), torch.full((2,), 2.0)]
    accumulation.load_state_dict({"count": 1, "seen": 1, "stash": saved})
    model.weight.grad, model.bias.grad = torch.full((2, 3), 3.0, device=device), torch.zeros(2, device=device)
    accumulation.accumulate(BackwardEnd(), TrainingPhase(), learner)  # closes the group of 2
    assert model.weight.grad.device == model.weight.device
    assert torch.equal(model.weight.grad, torch.full((2, 3), 2.0, device=device))
    assert torch.equal(model.bias.grad, torch.ones(2, device=device))
    assert torch.equal(saved[0], torch.ones(2, 3))  # restored as copies: the state is unchanged
    assert accumulation.state_dict() == {"count": 0, "seen": 2, "stash": [None, None]}


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({"count": 0}, r"expects the keys \['count', 'seen', 'stash'\]; got \['count'\]\. Pass what GradientAccumulation.state_dict\(\) returned"),
        ({"count": 3, "seen": 3, "stash": []}, r"GradientAccumulation\(3\).load_state_dict got count=3 and seen=3; an open group holds 0 to 2 micro-batches, and seen >= count\. Resume with the n the state was saved with"),
        ({"count": 2, "seen": 1, "stash": []}, r"got count=2 and seen=1"),
        ({"count": 1, "seen": 1, "stash": [1.0]}, r"expects 'stash' to be a list of tensors or None, one per trainable parameter"),
    ],
)
def test_load_state_dict_refuses_what_state_dict_never_returns(state: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GradientAccumulation(3).load_state_dict(state)


def test_gradients_of_another_model_are_refused() -> None:
    accumulation = GradientAccumulation(3)
    learner = SimpleNamespace(model=torch.nn.Linear(3, 2))
    accumulation.epoch_begin(EpochBegin(data=None), TrainingPhase(), learner)
    state = {"count": 1, "seen": 1, "stash": [torch.zeros(2, 4), torch.zeros(2)]}
    with pytest.raises(ValueError, match=r"got gradients of shapes \[\(2, 4\), \(2,\)\], but the model's trainable parameters have shapes \[\(2, 3\), \(2,\)\]\. Restore it into the learner it was saved from"):
        accumulation.load_state_dict(state)
