from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from cadence import READ, CadenceError, Callback, CancelFit, DictBatches, Learner, on
from cadence.callbacks.lambda_callback import LambdaCallback
from cadence.callbacks.sanity import SanityCheck, SanityCheckError
from cadence.events import BatchBegin, Event, FitBegin
from cadence.phases import Phase, TrainingPhase
from cadence.testing import make_test_learner, regression_batches

BATCHES = regression_batches(4, 8)


def learner_with(
    train: Any = BATCHES, valid: Any = BATCHES, *, model: Any = None, loss_fn: Any = None, **kwargs: Any
) -> Learner:
    learner = make_test_learner(SanityCheck(), **kwargs)
    learner.data = (train, valid)
    if model is not None:
        learner.model = model
    if loss_fn is not None:
        learner.loss_fn = loss_fn
    return learner


def problems(learner: Learner, n_epochs: int = 1) -> str:
    with pytest.raises(SanityCheckError) as info:
        learner.fit(n_epochs)
    return str(info.value)


def test_a_sound_setup_passes_and_trains() -> None:
    learner = learner_with()
    assert learner.fit(2).stopped is None
    assert isinstance(SanityCheckError("x"), CadenceError)


class Noisy(torch.nn.Module):
    """BatchNorm statistics, dropout randomness and a sub-module frozen in eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = torch.nn.BatchNorm1d(1)
        self.linear = torch.nn.Linear(1, 1)
        self.drop = torch.nn.Dropout(0.5)
        self.norm.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.linear(self.norm(x)))


def test_changes_nothing() -> None:
    model = Noisy()
    model.norm.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    for x, y in BATCHES[:2]:  # optimizer state, gradients and BatchNorm statistics exist
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
    model.norm.eval()

    learner = Learner(
        model,
        torch.nn.functional.mse_loss,
        optimizer,
        data=(BATCHES, BATCHES),
        callbacks=[SanityCheck(), LambdaCallback(stop, FitBegin, run_after=(SanityCheck,))],
        default_callbacks=False,
    )
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    moments = [{k: v.clone() for k, v in s.items()} for s in optimizer.state.values()]
    modes = [m.training for m in model.modules()]
    rng = torch.get_rng_state()

    result = learner.fit(1).stopped

    assert isinstance(result, CancelFit) and result.reason == "checked"
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(a, p.grad) for a, p in zip(grads, model.parameters()))
    after = list(optimizer.state.values())
    assert all(torch.equal(v, s[k]) for m, s in zip(moments, after) for k, v in m.items())
    assert [m.training for m in model.modules()] == modes == [True, False, True, True]
    assert torch.equal(torch.get_rng_state(), rng)


def stop(event: Event, phase: Phase, learner: Any) -> None:
    raise CancelFit("checked")


def test_validation_runs_in_eval_mode_without_grad() -> None:
    seen: list[tuple[bool, bool]] = []

    class Spy(torch.nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append((self.training, torch.is_grad_enabled()))
            return super().forward(x)

    learner = make_test_learner(SanityCheck(), LambdaCallback(stop, FitBegin, run_after=(SanityCheck,)))
    learner.model = Spy(1, 1)
    learner.fit(1)
    assert seen == [(True, True), (False, False)]


def test_fit_with_no_epochs_checks_nothing() -> None:
    learner_with(train=[torch.ones(1)]).fit(0)


def test_batches_that_are_not_pairs() -> None:
    text = problems(learner_with(train=[torch.ones(8, 1)], valid=[(1, 2, 3)]))
    assert "SanityCheck found 2 problems before the first epoch:" in text
    assert "  1. train: Each batch must be an (x, y) pair; got a Tensor. Make the data yield (inputs, targets)" in text
    assert "  2. valid: Each batch must be an (x, y) pair; got a tuple of length 3." in text


class ImageModel(torch.nn.Module):
    """Called as model(image=...), as DictBatches calls it."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(1, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.linear(image)


def test_batches_go_through_the_learners_adapter() -> None:
    dicts = [{"image": x, "labels": y} for x, y in BATCHES]
    learner = Learner(ImageModel(), torch.nn.functional.mse_loss, data=(dicts, dicts), adapter=DictBatches("labels"), callbacks=[SanityCheck()], default_callbacks=False)
    assert learner.fit(1).stopped is None  # not "each batch must be an (x, y) pair"
    wrong = [{"image": x, "label": y} for x, y in BATCHES]  # the adapter's own message, with its fix
    text = problems(Learner(ImageModel(), torch.nn.functional.mse_loss, data=(wrong, None), adapter=DictBatches("labels"), callbacks=[SanityCheck()], default_callbacks=False))
    assert "1. train: DictBatches(target='labels'): the batch has the keys 'image', 'label' but no 'labels'. Name the key that holds the targets, e.g. DictBatches(target='image')." in text
    wide = [{"image": torch.ones(8, 3), "labels": y} for _, y in BATCHES]
    text = problems(Learner(ImageModel(), torch.nn.functional.mse_loss, data=(wide, None), adapter=DictBatches("labels"), callbacks=[SanityCheck()], default_callbacks=False))
    assert "1. train: model(x) raised RuntimeError: mat1 and mat2 shapes cannot be multiplied" in text and "x is a dict" in text


def test_a_model_that_raises() -> None:
    with pytest.raises(SanityCheckError, match=r"train: model\(x\) raised RuntimeError: mat1 and mat2 shapes cannot be multiplied .*x is a tensor of shape \(8, 3\); make the model accept the data's inputs"):
        learner_with(train=[(torch.ones(8, 3), torch.ones(8, 1))], valid=None).fit(1)


def test_a_loss_that_raises() -> None:
    def strict(y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise ValueError("shapes differ\nsecond line")

    with pytest.raises(SanityCheckError, match=r"valid: loss_fn\(y_pred, y\) raised ValueError: shapes differ\. y_pred is a tensor of shape \(8, 1\) and y is a tensor of shape \(8, 1\); make the model's output and the targets fit loss_fn"):
        learner_with(loss_fn=strict).fit(1)


def test_a_loss_that_warns_about_broadcasting() -> None:
    with pytest.raises(SanityCheckError, match=r"train: loss_fn\(y_pred, y\) warned: Using a target size .* y_pred is a tensor of shape \(8, 1\) and y is a tensor of shape \(8,\); make their shapes match"):
        learner_with(train=[(torch.ones(8, 1), torch.ones(8))], valid=None).fit(1)


def test_a_loss_that_is_not_a_tensor() -> None:
    with pytest.raises(SanityCheckError, match=r"train: loss_fn returned bool True, not a tensor\. Return a scalar tensor"):
        learner_with(loss_fn=lambda y_pred, y: True, valid=None).fit(1)


def test_a_loss_that_is_not_a_scalar() -> None:
    text = problems(learner_with(loss_fn=lambda y_pred, y: (y_pred - y) ** 2))
    assert "1. train: loss_fn returned a tensor of shape (8, 1); the loss must be a scalar. Reduce it, e.g. with reduction='mean' or .mean()." in text
    assert "2. valid: loss_fn returned a tensor of shape (8, 1)" in text


def test_a_loss_that_is_not_finite() -> None:
    with pytest.raises(SanityCheckError, match=r"train: the loss is not finite \(the torch.float32 scalar nan\)\. Check the data for NaN or inf"):
        learner_with(train=[(torch.full((8, 1), float("nan")), torch.ones(8, 1))], valid=None).fit(1)


def test_a_loss_without_grad() -> None:
    with pytest.raises(SanityCheckError, match=r"train: the loss does not require grad, so there is nothing to backpropagate\. Check that the model has parameters with requires_grad=True and that loss_fn does not detach"):
        learner_with(loss_fn=lambda y_pred, y: torch.nn.functional.mse_loss(y_pred, y).detach(), valid=None).fit(1)


def test_a_loss_that_does_not_depend_on_the_parameters() -> None:
    offset = torch.zeros(1, requires_grad=True)
    with pytest.raises(SanityCheckError, match=r"train: the loss does not depend on any of the model's parameters; compute it from model\(x\)"):
        learner_with(loss_fn=lambda y_pred, y: ((y - offset) ** 2).mean(), valid=None).fit(1)


def test_a_loss_that_cannot_be_backpropagated() -> None:
    def in_place(y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        squashed = torch.sigmoid(y_pred)
        loss = ((squashed - y) ** 2).mean()
        squashed.add_(1)
        return loss

    with pytest.raises(SanityCheckError, match=r"train: backpropagating the loss raised RuntimeError: one of the variables needed for gradient computation has been modified by an inplace operation"):
        learner_with(loss_fn=in_place, valid=None).fit(1)


def test_empty_data() -> None:
    with pytest.raises(SanityCheckError, match=r"valid: the data yields no batches\. Pass a non-empty iterable of \(x, y\) batches"):
        learner_with(valid=[]).fit(1)


def test_data_that_fails_to_load() -> None:
    class Broken:
        def __iter__(self) -> Iterator[Any]:
            raise OSError("disk gone")

    with pytest.raises(SanityCheckError, match=r"train: taking the first batch raised OSError: disk gone; check the dataset and loader"):
        learner_with(train=Broken(), valid=None).fit(1)


def test_a_one_shot_iterator_over_several_epochs() -> None:
    with pytest.raises(SanityCheckError, match=r"train: the data is a one-shot iterator \(generator\); it is used up by the first epoch, so epochs 2 to 3 get no batches\. Pass data that can be iterated again, such as a list or a DataLoader"):
        learner_with(train=(b for b in BATCHES)).fit(3)


def test_a_one_shot_iterator_for_one_epoch_is_skipped_not_consumed(caplog: pytest.LogCaptureFixture) -> None:
    consumed: list[int] = []

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i, batch in enumerate(BATCHES):
            consumed.append(i)
            yield batch

    learner = learner_with(train=batches(), valid=None)
    with caplog.at_level(logging.WARNING, logger="cadence.callbacks.sanity"):
        learner.fit(1)
    assert consumed == [0, 1, 2, 3]  # every batch reached training
    assert "SanityCheck skipped the train data: it is a one-shot iterator (generator)" in caplog.text


def test_data_passed_to_fit_is_checked() -> None:
    learner = make_test_learner(SanityCheck())
    with pytest.raises(SanityCheckError, match=r"1\. train: Each batch must be an \(x, y\) pair; got a Tensor"):
        learner.fit(1, data=([torch.ones(2, 1)], None))


def test_no_data_at_all_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    from cadence.events import FitBegin
    from cadence.phases import Phase

    learner = make_test_learner(SanityCheck())
    learner.data = None
    with caplog.at_level(logging.WARNING, logger="cadence.callbacks.sanity"):
        learner.fire(FitBegin(1), Phase())
    assert "SanityCheck had nothing to check: FitBegin carried no data and learner.data is None." in caplog.text


def test_every_problem_in_one_message_and_nothing_trained() -> None:
    learner = learner_with(train=[(torch.ones(8, 3), torch.ones(8, 1))], valid=[torch.ones(2)])
    before = learner.model.weight.detach().clone()
    text = problems(learner)
    assert text.count("\n  ") == 2 and "1. train: model(x)" in text and "2. valid: Each batch" in text
    assert torch.equal(learner.model.weight, before)


class Noisy1d(torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Samples with noise from Python's and NumPy's RNGs, as random augmentation would add."""

    def __len__(self) -> int:
        return 24

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.tensor([index + random.random() + float(np.random.rand())])
        return x, x.clone()


def test_training_sees_the_same_batches_in_the_same_order_as_without_it() -> None:
    from torch.utils.data import DataLoader, RandomSampler

    def batches(*callbacks: Callback) -> list[list[float]]:
        seen: list[list[float]] = []

        class Order(Callback):
            state_access = {"batch.x": READ}

            @on(BatchBegin, phase=TrainingPhase)
            def see(self, event: Event, phase: Phase, learner: Any) -> None:
                seen.append(learner.batch.x.flatten().tolist())

        random.seed(0), np.random.seed(0), torch.manual_seed(0)
        # The training order comes from the loader's generator, the validation order from its
        # sampler's own generator.
        train = DataLoader(Noisy1d(), batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(3))
        valid = DataLoader(Noisy1d(), batch_size=4, sampler=RandomSampler(Noisy1d(), generator=torch.Generator().manual_seed(4)))
        learner = make_test_learner(Order(), *callbacks)
        learner.data = (train, valid)
        learner.fit(2)
        return seen

    assert batches(SanityCheck()) == batches()
