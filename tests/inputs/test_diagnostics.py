"""What the loop says about a bad loss, errors from the model and the loss, and data that yields
no batches: every message pinned with its fix, and the good cases left alone."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from cadence import WRITE, CancelEpoch, Callback, DataWarning, Learner, Recorder, on
from cadence.events import BackwardBegin, BatchEnd, EpochBegin, Event
from cadence.phases import Phase, TrainingPhase, ValidationPhase
from cadence.testing import make_test_learner, regression_batches

MSE = torch.nn.functional.mse_loss
Loss = Callable[[torch.Tensor, torch.Tensor], Any]


def learner(loss_fn: Loss = MSE, *callbacks: Callback, model: torch.nn.Module | None = None, **kwargs: Any) -> Learner:
    torch.manual_seed(0)
    batches = regression_batches(3)
    kwargs.setdefault("default_callbacks", False)
    return Learner(model or torch.nn.Linear(1, 1), loss_fn, data=(batches, batches), callbacks=list(callbacks), **kwargs)


def run(phase: type[Phase], target: Learner) -> None:
    if phase is TrainingPhase:
        target.fit(1)
    else:
        target.epoch(ValidationPhase(), regression_batches(2))


class Output:
    """Stands for a model-output object (a Hugging Face ModelOutput, say) with a ``loss``."""

    def __init__(self, loss: torch.Tensor) -> None:
        self.loss = loss


# ---- what loss_fn returns ------------------------------------------------------------------

BAD_LOSSES: list[tuple[Loss, type[Exception], str]] = [
    (lambda p, y: float(MSE(p.detach(), y)), TypeError, r"loss_fn returned a float \([\d.e-]+\) in {phase}, but it must return a scalar tensor\. A Python number has no gradient \(\.item\(\) or float\(\) detaches it\): return the tensor, e\.g\. loss_fn=torch\.nn\.functional\.mse_loss\."),
    (lambda p, y: None, TypeError, r"loss_fn returned None in {phase}, but it must return a scalar tensor\. Does it end with return\? Return the loss, e\.g\. return \(\(y_pred - y\) \*\* 2\)\.mean\(\)\."),
    (lambda p, y: (p - y) ** 2, ValueError, r"loss_fn returned a float32 tensor of shape \(8, 1\) on cpu in {phase}, but it must return a scalar tensor \(0-d: one number to backpropagate and to average\)\. Reduce it over the batch, e\.g\. .*\.mean\(\)\."),
    (lambda p, y: MSE(p, y).reshape(1), ValueError, r"loss_fn returned a float32 tensor of shape \(1,\) on cpu in {phase}, .*Make it 0-d, e\.g\. loss_fn=lambda y_pred, y: my_loss\(y_pred, y\)\.squeeze\(\)\."),
    (lambda p, y: (MSE(p, y), p), TypeError, r"loss_fn returned a tuple of 2 \(a float32 tensor of shape \(\) on cpu, a float32 tensor of shape \(8, 1\) on cpu\) in {phase}, .*Return the loss alone, e\.g\. loss_fn=lambda y_pred, y: my_loss\(y_pred, y\)\[0\]\."),
    (lambda p, y: Output(MSE(p, y)), TypeError, r"loss_fn returned an Output in {phase}, .*The Output it returned has a loss tensor: return that, e\.g\. loss_fn=lambda y_pred, y: compute\(y_pred, y\)\.loss\."),
    (lambda p, y: {"loss": MSE(p, y)}, TypeError, r"loss_fn returned a dict with keys \['loss'\] in {phase}, .*Return a tensor, e\.g\. loss_fn=torch\.nn\.functional\.cross_entropy\."),
]


@pytest.mark.parametrize("phase", [TrainingPhase, ValidationPhase])
@pytest.mark.parametrize(("loss_fn", "error", "message"), BAD_LOSSES)
def test_a_loss_fn_that_returns_no_scalar_tensor_says_what_it_returned(
    phase: type[Phase], loss_fn: Loss, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message.format(phase=phase.__name__)):
        run(phase, learner(loss_fn))


@pytest.mark.parametrize("phase", [TrainingPhase, ValidationPhase])
def test_the_check_comes_before_any_handler_sees_the_loss(phase: type[Phase]) -> None:
    seen: list[object] = []

    class Watch(Callback):
        @on(Event)
        def any_event(self, event: Event, phase: Phase, learner: Any) -> None:
            seen.append(type(event).__name__)

    with pytest.raises(TypeError, match="loss_fn returned None"):
        run(phase, learner(lambda p, y: None, Watch()))
    assert "LossBegin" in seen and not {"BackwardBegin", "BatchEnd"} & set(seen)


class Scaled(torch.Tensor):
    """A tensor subclass, as some libraries return: checked in full, and accepted."""


@pytest.mark.parametrize("phase", [TrainingPhase, ValidationPhase])
@pytest.mark.parametrize(
    "loss_fn",
    [MSE, torch.nn.MSELoss(), lambda p, y: MSE(p, y).double(), lambda p, y: MSE(p, y).as_subclass(Scaled)],
)
def test_scalar_tensors_of_any_dtype_or_subclass_pass(phase: type[Phase], loss_fn: Loss) -> None:
    target = learner(loss_fn, Recorder())
    run(phase, target)
    assert target.cbstate.history[phase()].steps > 0


def test_a_training_loss_without_a_graph_says_why_nothing_can_be_backpropagated() -> None:
    message = (
        r"batch\.loss in TrainingPhase is a float32 tensor of shape \(\) on cpu that does not require grad, so there "
        r"is nothing to backpropagate: loss_fn \(or a BackwardBegin handler\) computed it outside the model's graph "
        r"\(detached, through \.item\(\) or torch\.tensor\(\.\.\.\), or under torch\.no_grad\(\)\), .*Compute it from "
        r"y_pred with tensor operations, e\.g\. loss_fn=torch\.nn\.functional\.mse_loss\."
    )
    with pytest.raises(ValueError, match=message) as info:
        learner(lambda p, y: MSE(p.detach(), y)).fit(1)
    assert isinstance(info.value.__cause__, RuntimeError)
    # Validation has no graph and needs none:
    learner(lambda p, y: MSE(p.detach(), y)).epoch(ValidationPhase(), regression_batches(1))


class Rewriter(Callback):
    """Sets batch.loss at BackwardBegin to what ``make(loss)`` returns."""

    state_access = {"batch.loss": WRITE}

    def __init__(self, make: Callable[[torch.Tensor], Any]) -> None:
        self.make = make

    @on(BackwardBegin)
    def rewrite(self, event: Event, phase: Phase, learner: Any) -> None:
        learner.batch.loss = self.make(learner.batch.loss)


@pytest.mark.parametrize(
    ("make", "error", "shown"),
    [(lambda loss: float(loss.detach()), TypeError, r"a float \([\d.e-]+\)"), (lambda loss: loss.repeat(3), ValueError, r"a float32 tensor of shape \(3,\) on cpu")],
)
def test_a_backward_begin_handler_that_breaks_the_loss_is_named(make: Callable[[torch.Tensor], Any], error: type[Exception], shown: str) -> None:
    message = (
        rf"^batch\.loss is {shown} when backward\(\) runs in TrainingPhase: loss_fn returned a scalar tensor, so a "
        r"BackwardBegin handler set it to this\. A handler that rewrites the loss must leave a scalar tensor, e\.g\. "
        r"learner\.batch\.loss = learner\.batch\.loss \* 2\."
    )
    with pytest.raises(error, match=message):
        learner(MSE, Rewriter(make)).fit(1)
    learner(MSE, Rewriter(lambda loss: loss * 2)).fit(1)  # a scalar tensor stays fine


def test_other_backward_errors_keep_their_type() -> None:
    def poisoned(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = MSE(p, y)
        loss.register_hook(lambda grad: grad.view(7))  # fails inside backward
        return loss

    with pytest.raises(RuntimeError, match="shape '\\[7\\]' is invalid"):
        learner(poisoned).fit(1)


# ---- notes on errors from the model and the loss -------------------------------------------


def notes(error: BaseException) -> list[str]:
    return list(getattr(error, "__notes__", []))


class Broken(torch.nn.Module):
    """Fails on its ``fail_at``-th call."""

    def __init__(self, fail_at: int = 1) -> None:
        super().__init__()
        self.linear, self.calls, self.fail_at = torch.nn.Linear(1, 1), 0, fail_at

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.fail_at:
            raise KeyError("no such layer")
        return self.linear(x)


@pytest.mark.parametrize(("phase", "fail_at"), [(TrainingPhase, 1), (TrainingPhase, 3), (ValidationPhase, 2)])
def test_an_error_in_the_model_is_noted_with_phase_batch_and_input(phase: type[Phase], fail_at: int) -> None:
    target = learner(MSE, Recorder(), model=Broken(fail_at))
    with pytest.raises(KeyError, match="no such layer") as info:
        run(phase, target)
    assert notes(info.value) == [
        f"Raised by the model in {phase.__name__}, epoch 1, batch {fail_at}, called as model(x) with "
        f"x: a float32 tensor of shape (8, 1) on cpu."
    ]


class LossObject:
    def __call__(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(y_pred, y)

    def method(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self(y_pred, y)


def cross_entropy(y_pred: torch.Tensor, y: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(y_pred, y) * weight


@pytest.mark.parametrize(
    "loss_fn",
    [
        cross_entropy,
        lambda p, y: cross_entropy(p, y),
        functools.partial(cross_entropy, weight=2.0),
        torch.nn.CrossEntropyLoss(),
        LossObject(),
        LossObject().method,
        torch.nn.functional.nll_loss,
    ],
    ids=["function", "lambda", "partial", "module", "object", "method", "torch-function"],
)
def test_an_error_in_the_loss_is_noted_with_what_it_was_given(loss_fn: Loss) -> None:
    batches = [(torch.randn(4, 3), torch.tensor([0, 1, 7, 2]))]  # class 7 of 3
    target = Learner(torch.nn.Linear(3, 3), loss_fn, data=(batches, None), callbacks=[Recorder()], default_callbacks=False)
    with pytest.raises((IndexError, RuntimeError)) as info:
        target.fit(1)
    assert notes(info.value) == [
        "Raised by loss_fn in TrainingPhase, epoch 1, batch 1, called as loss_fn(y_pred, y) with y_pred: a float32 "
        "tensor of shape (4, 3) on cpu, y: an int64 tensor of shape (4,) on cpu."
    ]


def test_without_a_recorder_or_outside_an_epoch_the_note_leaves_out_the_position() -> None:
    with pytest.raises(KeyError) as info:
        learner(MSE, model=Broken()).fit(1)
    assert notes(info.value) == [
        "Raised by the model in TrainingPhase, called as model(x) with x: a float32 tensor of shape (8, 1) on cpu."
    ]
    with pytest.raises(KeyError) as info:
        learner(MSE, Recorder(), model=Broken()).step(ValidationPhase(), regression_batches(1, 2)[0])
    assert notes(info.value) == [
        "Raised by the model in ValidationPhase, called as model(x) with x: a float32 tensor of shape (2, 1) on cpu."
    ]


def test_the_loop_s_own_failures_get_the_position() -> None:
    # A failure that is neither the model's nor loss_fn's (here the optimizer's): which batch.
    def broken_step(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("optimizer broke")

    target = learner(MSE, Recorder())
    target.optimizer.step = broken_step  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="optimizer broke") as info:
        target.fit(1)
    assert notes(info.value) == ["Raised while TrainingPhase processed epoch 1, batch 1."]


def test_handler_errors_and_signals_get_no_note_of_the_step() -> None:
    class Failing(Callback):
        @on(BatchEnd, phase=TrainingPhase)
        def fail(self, event: Event, phase: Phase, learner: Any) -> None:
            torch.nn.Linear(2, 2)(torch.zeros(1, 3))  # a module fails, inside the handler

    with pytest.raises(RuntimeError) as info:
        learner(MSE, Failing(), Recorder()).fit(1)
    assert notes(info.value) == ["Raised by Failing.fail while handling BatchEnd in TrainingPhase."]

    raised: list[CancelEpoch] = []

    class Stopper(Callback):
        @on(BatchEnd, phase=TrainingPhase)
        def stop(self, event: Event, phase: Phase, learner: Any) -> None:
            raised.append(CancelEpoch("enough"))
            raise raised[-1]

    learner(MSE, Stopper()).fit(1)
    assert len(raised) == 1 and notes(raised[0]) == []


def test_the_exception_type_and_traceback_are_kept() -> None:
    with pytest.raises(KeyError) as info:
        learner(MSE, model=Broken()).fit(1)
    assert type(info.value) is KeyError
    assert info.traceback[-1].name == "forward"


# ---- data that yields no batches -----------------------------------------------------------


def fresh_batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    yield from regression_batches(2)


EXHAUSTED = (
    r"TrainingPhase ran an epoch without batches: its data, a generator, is an iterator, which one pass uses up, so "
    r"it was used up by an earlier epoch \(or was empty\)\. Pass data that starts over every epoch: a list "
    r"\(list\(batches\)\), a DataLoader, or an object whose __iter__ returns a new iterator, e\.g\. class Batches: "
    r"def __iter__\(self\): return make_batches\(\)\."
)


@pytest.mark.parametrize("defaults", [True, False])
def test_a_generator_used_for_several_epochs_warns_once_it_is_used_up(defaults: bool, capsys: pytest.CaptureFixture[str]) -> None:
    target = make_test_learner(Recorder(), default_callbacks=defaults)
    with pytest.warns(DataWarning, match=EXHAUSTED) as caught:
        target.fit(3, data=(fresh_batches(), None))
    assert len(caught) == 2  # epochs 2 and 3
    assert target.cbstate.history[TrainingPhase()].steps == 2  # epoch 1 trained
    assert {w.filename for w in caught} == {__file__}  # it points at the fit() call, not into cadence


class Batches:
    """The fix the warning recommends: a new iterator on every iter()."""

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return fresh_batches()


@pytest.mark.parametrize("data", [regression_batches(2), Batches(), DataLoader(TensorDataset(torch.zeros(4, 1), torch.zeros(4, 1)), 2)])
def test_data_that_starts_over_trains_every_epoch_without_a_warning(data: Any) -> None:
    target = make_test_learner(Recorder())
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        target.fit(3, data=(data, data))
    assert target.cbstate.history[TrainingPhase()].steps == 6


@pytest.mark.parametrize("defaults", [True, False])
@pytest.mark.parametrize(
    ("data", "shown", "why"),
    [
        ([], "a list of 0", "is empty. Pass data with at least one \\(x, y\\) batch."),
        (DataLoader(TensorDataset(torch.zeros(0, 1), torch.zeros(0, 1))), "a DataLoader", "is empty."),
        (type("Nothing", (), {"__iter__": lambda self: iter(())})(), "a Nothing", "yielded none. Pass data with at least one \\(x, y\\) batch; an iterable must start over on each iter\\(\\)."),
    ],
)
def test_empty_data_warns_with_or_without_default_callbacks(defaults: bool, data: Any, shown: str, why: str, capsys: pytest.CaptureFixture[str]) -> None:
    target = make_test_learner(default_callbacks=defaults)
    with pytest.warns(DataWarning, match=rf"^TrainingPhase ran an epoch without batches: its data, {shown}, {why}"):
        target.fit(1, data=(data, None))


def test_empty_validation_data_warns_for_the_validation_phase() -> None:
    with pytest.warns(DataWarning, match=r"^ValidationPhase ran an epoch without batches: its data, a list of 0, is empty\."):
        make_test_learner().fit(1, data=(regression_batches(1), []))


def test_an_epoch_cancelled_before_its_first_batch_is_no_empty_epoch() -> None:
    class Skip(Callback):
        @on(EpochBegin, phase=TrainingPhase)
        def skip(self, event: Event, phase: Phase, learner: Any) -> None:
            raise CancelEpoch("not this one")

    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        make_test_learner(Skip()).fit(2)


# ---- data that can never yield batches -----------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("batches", r"got a str, iterating it yields characters\. Pass a list of \(x, y\) pairs or a DataLoader\."),
        (b"batches", r"got a bytes, iterating it yields characters\."),
        ({"x": 1}, r"got a dict with keys \['x'\], iterating it yields its keys\. Pass a list of \(x, y\) pairs, e\.g\. list\(zip\(inputs, targets\)\)\."),
        (torch.zeros(4, 2), r"got a float32 tensor of shape \(4, 2\) on cpu, iterating it yields rows, not \(x, y\) pairs\. Pair inputs and targets in batches, e\.g\. DataLoader\(TensorDataset\(x, y\), batch_size=32\)\."),
        (TensorDataset(torch.zeros(4, 1), torch.zeros(4, 1)), r"got a TensorDataset, a dataset of samples\. Batch it: DataLoader\(dataset, batch_size=32\)\."),
        (7, r"got an int \(7\), which is not iterable\. Pass a list of \(x, y\) batches or a DataLoader\."),
    ],
)
def test_data_that_cannot_yield_batches_is_refused_when_handed_over(data: Any, message: str) -> None:
    with pytest.raises(TypeError, match=r"^Learner\(data=\.\.\.\): train must be an iterable of \(x, y\) batches; " + message):
        Learner(torch.nn.Linear(1, 1), MSE, data=(data, None))
    with pytest.raises(TypeError, match=r"^fit\(data=\.\.\.\): valid must be an iterable of \(x, y\) batches; " + message):
        make_test_learner().fit(1, data=(regression_batches(1), data))
    with pytest.raises(TypeError, match=r"^epoch\(phase, data\): data must be an iterable of \(x, y\) batches; " + message):
        make_test_learner().epoch(ValidationPhase(), data)
