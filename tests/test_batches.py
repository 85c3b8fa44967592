"""Batch adapters: dict batches, several inputs and model outputs with ``.loss``/``.logits``,
each pinned against the hand-written loop it replaces."""

from __future__ import annotations

import copy
import gc
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn

from cadence import READ, BatchAdapter, CancelBatch, Callback, DictBatches, Learner, Metrics, Recorder, ToDevice, TupleBatches, on
from cadence.events import BatchBegin, Event, LossBegin
from cadence.phases import Phase, TrainingPhase

N_BATCHES = 4


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.image, self.extra = nn.Linear(3, 1), nn.Linear(2, 1)

    def forward(self, image: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
        return self.image(image) + self.extra(extra)


@dataclass
class Output:
    """What a HuggingFace model returns: the loss when given the labels, and the logits."""

    logits: torch.Tensor
    loss: torch.Tensor | None = None


class SelfScoring(TwoInputs):
    """Computes its own loss (twice the MSE, to tell it from loss_fn) when given labels."""

    def forward(self, image: torch.Tensor, extra: torch.Tensor, labels: torch.Tensor | None = None) -> Output:  # type: ignore[override]
        logits = super().forward(image, extra)
        loss = None if labels is None else 2 * nn.functional.mse_loss(logits, labels)
        return Output(logits, loss)


def triples(seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(8, 3, generator=generator), torch.randn(8, 2, generator=generator), torch.randn(8, 1, generator=generator))
        for _ in range(N_BATCHES)
    ]


def dicts(seed: int = 0) -> list[dict[str, torch.Tensor]]:
    return [{"image": a, "extra": b, "labels": y} for a, b, y in triples(seed)]


def fitted(model: nn.Module, data: list[Any], adapter: BatchAdapter, **kwargs: Any) -> Learner:
    learner = Learner(
        model, nn.functional.mse_loss, torch.optim.SGD(model.parameters(), lr=0.1),
        data=(data, data), adapter=adapter, callbacks=[Recorder(), Metrics()], default_callbacks=False, **kwargs,
    )
    learner.fit(2)
    return learner


def hand_written(model: nn.Module, data: list[Any], loss_of: Callable[[nn.Module, Any], torch.Tensor]) -> nn.Module:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        for batch in data:
            optimizer.zero_grad(set_to_none=True)
            loss_of(model, batch).backward()
            optimizer.step()
    return model


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_several_inputs_train_as_the_hand_written_loop() -> None:
    model = TwoInputs()
    expected = hand_written(copy.deepcopy(model), triples(), lambda m, b: nn.functional.mse_loss(m(b[0], b[1]), b[2]))
    learner = fitted(model, triples(), TupleBatches(2))
    assert same_weights(learner.model, expected)
    assert isinstance(learner.cbstate.metrics.epochs["valid/loss"][-1], float)
    predictions = learner.predict([(a, b) for a, b, _ in triples(1)])  # inputs only: no targets
    with torch.no_grad():
        assert torch.equal(predictions, torch.cat([expected(a, b) for a, b, _ in triples(1)]))


def test_dict_batches_train_as_the_hand_written_loop() -> None:
    model = TwoInputs()
    expected = hand_written(
        copy.deepcopy(model), dicts(), lambda m, b: nn.functional.mse_loss(m(b["image"], b["extra"]), b["labels"])
    )
    learner = fitted(model, dicts(), DictBatches("labels"), executor=None)
    assert same_weights(learner.model, expected)
    predictions, targets = learner.get_preds([{"image": d["image"], "extra": d["extra"]} for d in dicts(1)])
    assert targets is None and predictions.shape == (8 * N_BATCHES, 1)


class Devices(Callback):
    """Records, at BatchBegin after ToDevice, the type of batch.x and where its tensors are."""

    state_access = {"batch.x": READ, "batch.y": READ}
    run_after = (ToDevice,)

    def __init__(self) -> None:
        self.seen: list[tuple[type, dict[str, str], str]] = []

    @on(BatchBegin)
    def record(self, event: Event, phase: Phase, learner: Any) -> None:
        x, y = learner.batch.x, learner.batch.y
        self.seen.append((type(x), {k: str(v.device) for k, v in x.items()}, str(y.device)))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))])
def test_to_device_moves_dict_batches(device: str) -> None:
    model, devices = TwoInputs(), Devices()
    expected = hand_written(
        copy.deepcopy(model), dicts(), lambda m, b: nn.functional.mse_loss(m(b["image"], b["extra"]), b["labels"])
    )
    learner = Learner(
        model, nn.functional.mse_loss, torch.optim.SGD(model.parameters(), lr=0.1), data=(dicts(), dicts()),
        adapter=DictBatches("labels"), callbacks=[devices, ToDevice(device)], default_callbacks=False,
    )
    learner.fit(2)
    where = str(model.image.weight.device)
    assert where.startswith(device)
    # Every batch, in training and validation, reached the model as a dict of inputs on its device.
    assert devices.seen == [(dict, {"image": where, "extra": where}, where)] * (4 * N_BATCHES)
    assert same_weights(model.cpu(), expected)


class CancelAtLossBegin(Callback):
    @on(LossBegin, phase=TrainingPhase)
    def cancel(self, event: Event, phase: Phase, learner: Any) -> None:
        raise CancelBatch


class Remembered(SelfScoring):
    """Keeps a weak reference to every loss it returns."""

    def __init__(self) -> None:
        super().__init__()
        self.losses: list[weakref.ref[torch.Tensor]] = []

    def forward(self, image: torch.Tensor, extra: torch.Tensor, labels: torch.Tensor | None = None) -> Output:  # type: ignore[override]
        output = super().forward(image, extra, labels)
        if output.loss is not None:
            self.losses.append(weakref.ref(output.loss))
        return output


def test_the_models_loss_does_not_outlive_its_batch() -> None:
    model = Remembered()
    adapter = DictBatches("labels", pass_target=True, prediction="logits")
    learner = Learner(model, nn.functional.mse_loss, data=(dicts(), None), adapter=adapter, callbacks=[CancelAtLossBegin()], default_callbacks=False)
    learner.fit(1)  # every batch is cancelled before its loss is taken
    gc.collect()
    assert len(model.losses) == N_BATCHES and all(loss() is None for loss in model.losses)


def test_a_model_that_computes_its_own_loss() -> None:
    model = SelfScoring()
    expected = hand_written(copy.deepcopy(model), dicts(), lambda m, b: m(**b).loss)
    adapter = DictBatches("labels", pass_target=True, prediction="logits")
    learner = fitted(model, dicts(), adapter)
    assert same_weights(learner.model, expected)  # the model's loss, not loss_fn's
    with torch.no_grad():
        logits = torch.cat([expected(d["image"], d["extra"]).logits for d in dicts()])
    predictions, targets = learner.get_preds()
    assert torch.equal(predictions, logits) and torch.equal(targets, torch.cat([d["labels"] for d in dicts()]))
    # Batches of 8, 3 and 5: the model's losses weighted by batch size, as a hand-written loop would.
    sizes = (8, 3, 5)
    uneven = [{k: torch.cat([d[k] for d in dicts()[:2]]).split(sizes)[i] for k in dicts()[0]} for i in range(3)]
    with torch.no_grad():
        losses = [float(expected(**d).loss) for d in uneven]  # type: ignore[arg-type]
    assert learner.validate(uneven)["loss"] == pytest.approx(sum(l * n for l, n in zip(losses, sizes)) / 16, rel=1e-6)
    # Without labels the model returns no loss and loss_fn computes it.
    plain = DictBatches("labels", prediction="logits")
    assert plain.loss(nn.functional.mse_loss, torch.zeros(2), torch.ones(2)) == 1.0


def test_outputs_that_are_dicts_give_their_logits_and_loss() -> None:
    adapter = TupleBatches(1, prediction="logits")
    assert adapter.forward(lambda x: {"logits": x + 1, "loss": torch.tensor(5.0)}, (torch.zeros(1),)) == 1
    assert adapter.loss(nn.functional.mse_loss, torch.zeros(1), torch.zeros(1)) == 5.0
    assert adapter.loss(nn.functional.mse_loss, torch.zeros(1), torch.ones(1)) == 1.0  # used once


@pytest.mark.parametrize(
    ("adapter", "batch", "message"),
    [
        (DictBatches(), (1, 2), r"DictBatches expects each batch to be a dict such as \{\"input_ids\": \.\.\., 'labels': \.\.\.\}; got a tuple of length 2\. For \(x, y\) batches leave out adapter="),
        (DictBatches("labels"), {"image": 1, "label": 2}, r"DictBatches\(target='labels'\): the batch has the keys 'image', 'label' but no 'labels'\. Name the key that holds the targets, e\.g\. DictBatches\(target='image'\)"),
        (TupleBatches(2), (1, 2), r"TupleBatches\(2\) expects each batch to be a tuple of 3 items, 2 inputs then the target; got a tuple of length 2\. Set n_inputs to the number of inputs"),
    ],
)
def test_a_batch_the_adapter_does_not_understand_says_what_to_write(adapter: BatchAdapter, batch: object, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        adapter.unpack(batch)


@pytest.mark.parametrize(
    ("adapter", "batch", "message"),
    [
        (TupleBatches(1), torch.zeros(2), r"TupleBatches\(1\) expects each batch to be a tuple of 1 input, optionally followed by the target; got a Tensor\. Set n_inputs to the number of inputs"),
        (TupleBatches(2), (1,), r"TupleBatches\(2\) expects each batch to be a tuple of 2 inputs, optionally followed by the target; got a tuple of length 1\."),
        (TupleBatches(1), (1, 2, 3), r"TupleBatches\(1\) expects each batch to be a tuple of 1 input, optionally followed by the target; got a tuple of length 3\."),
        (BatchAdapter(), {"x": 1}, r'Each batch must be an \(x, y\) pair; got a dict with the keys \'x\'\..*adapter=DictBatches\(target="labels"\)'),
    ],
)
def test_an_inputs_only_batch_the_adapter_does_not_understand_says_what_to_write(adapter: BatchAdapter, batch: object, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        adapter.unpack_inputs(batch)
    with pytest.raises(TypeError, match=r"TupleBatches\(1\) expects each batch to be a tuple of 2 items, 1 input then the target"):
        TupleBatches(1).unpack((1, 2, 3))


def test_errors_at_construction_and_in_the_loop() -> None:
    with pytest.raises(ValueError, match=r"TupleBatches\(n_inputs=\.\.\.\) expects an int >= 1; got 0"):
        TupleBatches(0)
    with pytest.raises(ValueError, match=r'names the attribute of the model\'s output to use as y_pred, e\.g\. prediction="logits"'):
        DictBatches(prediction="not a name")
    with pytest.raises(TypeError, match=r'DictBatches\(target=\.\.\.\) is the key of the targets, e\.g\. "labels"; got 3'):
        DictBatches(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r'Learner\(adapter=\.\.\.\) expects a BatchAdapter, e\.g\. DictBatches\(target="labels"\)'):
        Learner(TwoInputs(), nn.functional.mse_loss, adapter="dict")  # type: ignore[arg-type]
    learner = Learner(TwoInputs(), nn.functional.mse_loss, data=(dicts(), None), default_callbacks=False)
    with pytest.raises(TypeError, match=r'got a dict with the keys .*For dict batches write Learner\(\.\.\., adapter=DictBatches\(target="labels"\)\)'):
        learner.fit(1)
    with pytest.raises(TypeError, match=r"Learner\(adapter=\.\.\.\) expects a BatchAdapter.*; got str"):
        learner.adapter = "dict"  # type: ignore[assignment]
    learner.adapter = TupleBatches(2, prediction="scores")
    with pytest.raises(TypeError, match=r"TupleBatches\(prediction='scores'\): the model returned a Tensor, which has no 'scores'"):
        learner.fit(1, data=(triples(), None))
