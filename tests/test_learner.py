"""The Learner: the training loop's events and state, its arguments, and executors."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
import torch
from helpers import Entry, RecordingCallback, RecordingExecutor, linear_batches

from cadence import READ, WRITE, Callback, Learner, Metrics, Recorder, SerialExecutor, on
from cadence.errors import CadenceError
from cadence.events import (
    BackwardBegin,
    BackwardEnd,
    BatchBegin,
    BatchEnd,
    EpochBegin,
    EpochEnd,
    Event,
    FitBegin,
    FitEnd,
    LossBegin,
)
from cadence.phases import Phase, TrainingPhase, ValidationPhase
from cadence.state import Batch
from cadence.testing import make_test_learner

TRAIN_BATCH = [BatchBegin, LossBegin, BackwardBegin, BackwardEnd, BatchEnd]
VALID_BATCH = [BatchBegin, LossBegin, BatchEnd]


def events_of(log: list[Entry], phase: type[Phase]) -> list[type[Event]]:
    return [event for event, kind, _ in log if kind is phase]


# ---- the loop's events ---------------------------------------------------------------------


def test_training_and_validation_events_in_order(log: list[Entry]) -> None:
    learner = make_test_learner(RecordingCallback(log), n_batches=2)
    assert learner.fit(2).stopped is None
    train_epoch = [(e, TrainingPhase) for e in [EpochBegin, *TRAIN_BATCH, *TRAIN_BATCH, EpochEnd]]
    valid_epoch = [(e, ValidationPhase) for e in [EpochBegin, *VALID_BATCH, *VALID_BATCH, EpochEnd]]
    expected = [(FitBegin, Phase), *train_epoch, *valid_epoch, *train_epoch, *valid_epoch, (FitEnd, Phase)]
    assert [(event, phase) for event, phase, _ in log] == expected


def test_fit_events_fire_with_the_plain_phase() -> None:
    seen: list[tuple[Any, Any]] = []

    class Fit(Callback):
        @on(FitBegin)
        @on(FitEnd)
        def record(self, event: Event, phase: Phase, learner: Any) -> None:
            seen.append((event, phase))

    make_test_learner(Fit()).fit(3)
    assert [type(event) for event, _ in seen] == [FitBegin, FitEnd]
    assert all(type(phase) is Phase for _, phase in seen)
    assert seen[0][0].n_epochs == 3


def test_fit_uses_one_phase_instance_throughout() -> None:
    phases: set[int] = set()

    class Watch(Callback):
        @on(Event, phase=TrainingPhase)
        def watch(self, event: Event, phase: Phase, learner: Any) -> None:
            phases.add(id(phase))

    make_test_learner(Watch(), n_batches=2).fit(2)
    assert len(phases) == 1


def test_no_validation_without_validation_data(log: list[Entry]) -> None:
    learner = make_test_learner(RecordingCallback(log), n_batches=2)
    learner.fit(2, data=(learner.data[0], None))  # type: ignore[index]
    assert events_of(log, ValidationPhase) == []
    assert events_of(log, TrainingPhase).count(EpochBegin) == 2


def test_fit_data_overrides_the_learner_data(log: list[Entry]) -> None:
    learner = make_test_learner(RecordingCallback(log), n_batches=4)
    learner.fit(1, data=(linear_batches((3, 3, 3)), linear_batches((5,))))
    assert events_of(log, TrainingPhase).count(BatchBegin) == 3
    assert events_of(log, ValidationPhase).count(BatchBegin) == 1
    log.clear()
    learner.fit(1)
    assert events_of(log, TrainingPhase).count(BatchBegin) == 4


def test_epoch_begin_carries_the_data() -> None:
    seen: list[Any] = []

    class Watch(Callback):
        @on(EpochBegin)
        def watch(self, event: Any, phase: Phase, learner: Any) -> None:
            seen.append(event.data)

    learner = make_test_learner(Watch())
    learner.fit(1)
    assert seen[0] is learner.data[0]  # type: ignore[index]
    assert seen[1] is learner.data[1]  # type: ignore[index]


def test_fit_zero_epochs_fires_only_fit_events(log: list[Entry]) -> None:
    make_test_learner(RecordingCallback(log)).fit(0)
    assert log == [(FitBegin, Phase, "rec"), (FitEnd, Phase, "rec")]


class StateSpy(Callback):
    """Records what exists at each training event."""

    state_access = {"batch": READ, "model": READ, "optimizer": READ}

    def __init__(self) -> None:
        self.seen: list[tuple[type[Event], dict[str, Any]]] = []

    @on(Event, phase=TrainingPhase)
    def spy(self, event: Event, phase: Phase, learner: Any) -> None:
        batch = learner.batch
        self.seen.append(
            (
                type(event),
                {
                    "x": batch.x,
                    "y_pred": batch.y_pred,
                    "loss": batch.loss,
                    "grads": [p.grad for p in learner.model.parameters()],
                    "weight": learner.model.weight.detach().clone(),
                },
            )
        )


def test_state_available_at_each_training_event() -> None:
    spy = StateSpy()
    learner = make_test_learner(spy, n_batches=2)
    learner.fit(1, data=(learner.data[0], None))  # type: ignore[index]
    per_batch = [s for s in spy.seen if s[0] not in (EpochBegin, EpochEnd)]
    assert [event for event, _ in per_batch] == TRAIN_BATCH * 2
    for start in (0, 5):
        begin, loss_begin, backward_begin, backward_end, end = (s for _, s in per_batch[start : start + 5])
        assert begin["x"] is not None and begin["y_pred"] is None and begin["loss"] is None
        assert loss_begin["y_pred"] is not None and loss_begin["loss"] is None
        # zero_grad(set_to_none=True) ran before the forward.
        assert loss_begin["grads"] == [None]
        assert backward_begin["loss"].requires_grad
        # From BackwardEnd on, the loss is detached and the gradients are in.
        assert not backward_end["loss"].requires_grad and backward_end["loss"].grad_fn is None
        assert not end["loss"].requires_grad
        assert backward_end["grads"][0] is not None
        # The optimizer steps between BackwardEnd and BatchEnd.
        assert torch.equal(backward_end["weight"], begin["weight"])
        assert not torch.equal(end["weight"], backward_end["weight"])


def test_loss_begin_rewrite_of_y_pred_is_what_the_loss_sees() -> None:
    losses: list[tuple[torch.Tensor, torch.Tensor]] = []

    class Rewrite(Callback):
        state_access = {"batch": WRITE}

        @on(LossBegin)
        def double(self, event: Event, phase: Phase, learner: Any) -> None:
            learner.batch.y_pred = learner.batch.y_pred * 2

        @on(BatchEnd)
        def check(self, event: Event, phase: Phase, learner: Any) -> None:
            batch = learner.batch
            losses.append((batch.loss, torch.nn.functional.mse_loss(batch.y_pred, batch.y)))

    learner = make_test_learner(Rewrite(), n_batches=2)
    learner.fit(1, data=(learner.data[0], learner.data[0]))  # type: ignore[index]
    assert len(losses) == 4
    for loss, expected in losses[2:]:  # validation: the model does not change after the loss
        assert torch.equal(loss, expected)


def gradient_after_one_batch(*callbacks: Callback) -> torch.Tensor:
    grads: list[torch.Tensor] = []

    class Grab(Callback):
        state_access = {"model": READ}

        @on(BackwardEnd)
        def grab(self, event: Event, phase: Phase, learner: Any) -> None:
            grads.append(learner.model.weight.grad.clone())

    learner = make_test_learner(*callbacks, Grab(), n_batches=1)
    learner.fit(1, data=(learner.data[0], None))  # type: ignore[index]
    return grads[0]


def test_backward_begin_rewrite_of_the_loss_is_what_is_backpropagated() -> None:
    class Doubler(Callback):
        state_access = {"batch.loss": WRITE}

        @on(BackwardBegin)
        def double(self, event: Event, phase: Phase, learner: Any) -> None:
            learner.batch.loss = learner.batch.loss * 2

    plain = gradient_after_one_batch()
    doubled = gradient_after_one_batch(Doubler())
    assert torch.equal(doubled, plain * 2)


def test_validation_does_not_touch_the_weights() -> None:
    learner = make_test_learner(n_batches=2)
    before = learner.model.weight.detach().clone()
    learner.epoch(ValidationPhase(), learner.data[1])  # type: ignore[index]
    assert torch.equal(learner.model.weight, before)
    assert learner.model.weight.grad is None


def test_step_processes_one_batch(log: list[Entry]) -> None:
    learner = make_test_learner(RecordingCallback(log))
    learner.step(TrainingPhase(), learner.data[0][0])  # type: ignore[index]
    assert [event for event, _, _ in log] == TRAIN_BATCH


def test_step_in_validation_runs_in_eval_mode_without_gradients() -> None:
    seen: list[tuple[bool, bool, bool]] = []

    class Mode(Callback):
        state_access = {"model": READ, "batch.y_pred": READ}

        @on(LossBegin, phase=ValidationPhase)
        def check(self, event: Event, phase: Phase, learner: Any) -> None:
            seen.append((learner.model.training, torch.is_grad_enabled(), learner.batch.y_pred.requires_grad))

    model = torch.nn.Sequential(torch.nn.BatchNorm1d(1), torch.nn.Linear(1, 1))
    norm = model[0]
    assert isinstance(norm, torch.nn.BatchNorm1d)
    learner = Learner(model, torch.nn.functional.mse_loss, callbacks=[Mode()], default_callbacks=False)
    running_mean = norm.running_mean.clone()  # type: ignore[union-attr]
    learner.step(ValidationPhase(), (torch.randn(8, 1) + 5, torch.randn(8, 1)))
    assert seen == [(False, False, False)]
    assert torch.equal(norm.running_mean, running_mean)  # type: ignore[arg-type]
    assert norm.num_batches_tracked == 0
    assert model.training and torch.is_grad_enabled()


class LastBatch(Callback):
    """Keeps the loss that FitEnd handlers see; optionally fails at the first training BatchEnd."""

    state_access = {"batch.loss": READ}

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.loss: Any = None

    @on(BatchEnd, phase=TrainingPhase)
    def batch_end(self, event: Event, phase: Phase, learner: Any) -> None:
        if self.fail:
            raise RuntimeError("boom")

    @on(FitEnd)
    def fit_end(self, event: Event, phase: Phase, learner: Any) -> None:
        self.loss = learner.batch.loss


@pytest.mark.parametrize("fail", [False, True])
def test_fit_lets_go_of_the_last_batch_after_fit_end(fail: bool) -> None:
    last = LastBatch(fail)
    learner = make_test_learner(last, n_batches=2)
    if fail:
        with pytest.raises(RuntimeError, match="boom"):
            learner.fit(1)
    else:
        learner.fit(1)
    assert last.loss is not None  # FitEnd handlers still see the last batch
    assert (learner.batch.x, learner.batch.y, learner.batch.y_pred, learner.batch.loss) == (None,) * 4


def test_fit_and_epoch_reset_custom_batch_fields_to_their_defaults() -> None:
    @dataclass(slots=True)
    class TaggedBatch(Batch):
        tag: str = "untagged"

    @dataclass(frozen=True)
    class Tagged(TrainingPhase):
        name: ClassVar[str] = "tagged"
        batch_type: ClassVar[type[Batch]] = TaggedBatch

        def step(self, loop: Any, batch: object) -> None:
            loop.batch.tag = "tagged"
            super().step(loop, batch)

    learner = make_test_learner(n_batches=2)
    learner.step(Tagged(), learner.data[0][0])  # type: ignore[index]
    assert learner.batch.tag == "tagged"  # type: ignore[attr-defined]  # step() keeps the batch
    learner.fit(1)
    assert learner.batch.tag == "untagged"  # type: ignore[attr-defined]
    assert learner.batch.loss is None
    learner.step(Tagged(), learner.data[0][0])  # type: ignore[index]
    learner.epoch(Tagged(), learner.data[0])  # type: ignore[index]
    assert learner.batch.tag == "untagged" and learner.batch.loss is None  # epoch() clears it too


class Holder(Callback):
    """Counts its teardowns; with ``fail``, each raises."""

    def __init__(self, fail: bool = False) -> None:
        self.fail, self.teardowns = fail, 0

    def teardown(self) -> None:
        self.teardowns += 1
        if self.fail:
            raise RuntimeError("teardown failed")


def test_every_entry_point_ends_with_the_callbacks_teardown() -> None:
    holder = Holder()
    learner = make_test_learner(holder, Metrics(), n_batches=2)
    learner.fit(1)
    learner.epoch(ValidationPhase(), learner.data[1])  # type: ignore[index]
    learner.step(TrainingPhase(), learner.data[0][0])  # type: ignore[index]
    learner.validate(), learner.predict(learner.data[1]), learner.lr_find(num_it=2)  # type: ignore[index]
    assert holder.teardowns == 6  # once each: fit's epochs are inside fit's boundary

    failing = make_test_learner(Holder(fail=True), Holder(), n_batches=2)
    with pytest.raises(RuntimeError, match="teardown failed") as caught:
        failing.fit(1)
    assert caught.value.__notes__ == ["Raised by Holder#1.teardown."]
    assert failing.callbacks[1].teardowns == 1  # type: ignore[attr-defined]  # the others still run

    def broken(y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise ValueError("broken loss")

    failing.loss_fn = broken
    with pytest.raises(ValueError, match="broken loss") as error:  # the original error wins
        failing.epoch(ValidationPhase(), failing.data[1])  # type: ignore[index]
    assert "Holder#1.teardown failed too: RuntimeError: teardown failed" in error.value.__notes__


def test_make_test_learner_converges() -> None:
    learner = make_test_learner()
    learner.fit(5)
    assert abs(learner.model.weight.item() - 3.0) < 0.05


# ---- arguments -----------------------------------------------------------------------------


def model() -> torch.nn.Module:
    return torch.nn.Linear(1, 1)


MSE = torch.nn.functional.mse_loss


def test_optimizer_defaults_to_adam_over_the_model() -> None:
    net = model()
    learner = Learner(net, MSE)
    assert isinstance(learner.optimizer, torch.optim.Adam)
    assert learner.optimizer.param_groups[0]["params"] == list(net.parameters())


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"model": "net"}, TypeError, r"Learner\(model=\.\.\.\) expects a torch\.nn\.Module; got str\."),
        ({"loss_fn": "mse"}, TypeError, r"Learner\(loss_fn=\.\.\.\) expects a callable loss_fn\(y_pred, y\), e\.g\. torch\.nn\.functional\.cross_entropy; got str\."),
        ({"optimizer": "adam"}, TypeError, r"Learner\(optimizer=\.\.\.\) expects a torch\.optim\.Optimizer, e\.g\. torch\.optim\.SGD\(model\.parameters\(\), lr=0\.1\), or None for Adam; got str\."),
        ({"callbacks": Recorder()}, TypeError, r"callbacks must be a list of Callback instances, e\.g\. \[Recorder\(\)\]; got Recorder\(\)\."),
        ({"callbacks": 3}, TypeError, r"callbacks must be a list of Callback instances"),
        ({"callbacks": [Recorder]}, TypeError, r"callbacks\[0\] got the class Recorder; pass an instance: Recorder\(\)\."),
        ({"callbacks": [Recorder(), print]}, TypeError, r"callbacks\[1\] got a builtin_function_or_method, not a Callback; subclass cadence\.Callback\."),
        ({"data": [1]}, TypeError, r"Learner\(data=\.\.\.\) expects \(train, valid\), each an iterable of \(x, y\) batches, valid may be None; got list\. For training data alone write data=\(train, None\)\."),
        ({"data": (None, None)}, TypeError, r"Learner\(data=\.\.\.\): train must be an iterable of \(x, y\) batches; got None, which is not iterable\. Pass a list of \(x, y\) batches or a DataLoader\."),
        ({"data": ([], 5)}, TypeError, r"Learner\(data=\.\.\.\): valid must be an iterable of \(x, y\) batches; got an int \(5\), which is not iterable\."),
        ({"executor": object()}, TypeError, r"Learner\(executor=\.\.\.\) expects an object with run\(plan, event, phase\), such as SerialExecutor\(\); got object\."),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs: dict[str, Any], error: type[Exception], message: str) -> None:
    arguments: dict[str, Any] = {"model": model(), "loss_fn": MSE, **kwargs}
    with pytest.raises(error, match=message):
        Learner(**arguments)


@pytest.mark.parametrize("n_epochs", [-1, 1.5, True, "2"])
def test_fit_rejects_a_bad_number_of_epochs(n_epochs: Any) -> None:
    with pytest.raises(ValueError, match=r"fit\(n_epochs\) expects a non-negative int; got "):
        make_test_learner().fit(n_epochs)


def test_fit_without_data_says_where_to_pass_it() -> None:
    learner = Learner(model(), MSE)
    with pytest.raises(ValueError, match=r"fit\(\) has no data: pass it, fit\(n_epochs, data=\(train, valid\)\), or give the learner data, Learner\(\.\.\., data=\(train, valid\)\), each an iterable of \(x, y\) batches \(valid may be None\)\."):
        learner.fit(1)
    for call, what in ((learner.validate, "validate() has no data: pass it, validate(batches), or give the learner validation data"),
                       (learner.get_preds, "get_preds() has no data: pass it, get_preds(batches), or give the learner validation data"),
                       (learner.lr_find, "lr_find() has no data: pass it, lr_find(batches), or give the learner training data")):
        with pytest.raises(ValueError, match=re.escape(what)):
            call()


def test_fit_checks_its_data_argument() -> None:
    with pytest.raises(TypeError, match=r"fit\(data=\.\.\.\) expects \(train, valid\)"):
        make_test_learner().fit(1, data=[[]])  # type: ignore[arg-type]


def test_epoch_checks_its_arguments() -> None:
    learner = make_test_learner()
    with pytest.raises(TypeError, match=r"Expected a phase such as TrainingPhase\(\); got type\."):
        learner.epoch(TrainingPhase, [])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"epoch\(phase, data\): data must be an iterable of \(x, y\) batches; got an int \(3\), which is not iterable\."):
        learner.epoch(TrainingPhase(), 3)  # type: ignore[arg-type]


def test_firing_an_undeclared_event_says_where_to_declare_it() -> None:
    class Custom(Event):
        __slots__ = ()

    learner = make_test_learner()
    with pytest.raises(CadenceError, match=r"TrainingPhase fired Custom, which is not in TrainingPhase\.events; add it there so that its plan is built\."):
        learner.fire(Custom(), TrainingPhase())


def test_firing_in_a_phase_without_plans_says_to_run_it_through_epoch_or_step() -> None:
    @dataclass(frozen=True)
    class Warmup(TrainingPhase):
        name: ClassVar[str] = "warmup"

    learner = make_test_learner()
    with pytest.raises(CadenceError, match=r"^Warmup fired BatchEnd, but no plans exist for Warmup yet: they are built when its epoch starts\. Run it with learner\.epoch\(Warmup\(\), data\) or learner\.step\(Warmup\(\), batch\) instead of calling fire\(\) directly\.$"):
        learner.fire(BatchEnd(), Warmup())


def test_learner_state_and_repr() -> None:
    learner = make_test_learner(Recorder())
    assert repr(learner) == "Learner(Linear, callbacks=[Recorder])"
    assert "history" in learner.cbstate
    assert isinstance(learner.executor, SerialExecutor)


# ---- executors -----------------------------------------------------------------------------


def test_custom_executor_runs_every_plan_including_empty_fit_plans() -> None:
    executor = RecordingExecutor()
    learner = make_test_learner(Recorder(), n_batches=2, executor=executor)
    learner.fit(1)
    assert learner.executor is executor
    assert executor.runs[0] == (FitBegin, Phase, 0)
    assert executor.runs[-1] == (FitEnd, Phase, 0)
    assert (BatchEnd, TrainingPhase, 1) in executor.runs
    # Plans nobody handles do not reach it.
    assert all(event is not LossBegin for event, _, _ in executor.runs)
    assert learner.cbstate.history[TrainingPhase()].steps == 2


@pytest.mark.parametrize(
    "change",
    [
        lambda learner: learner.add_callback(Callback()),
        lambda learner: learner.remove_callback(Recorder),
        lambda learner: learner.replace_callback(Recorder()),
    ],
)
def test_custom_executor_survives_callback_changes(change: Any) -> None:
    executor = RecordingExecutor()
    learner = make_test_learner(Recorder(), executor=executor)
    change(learner)
    assert learner.executor is executor
    executor.runs.clear()
    learner.fit(1)
    assert executor.runs and executor.runs[0][0] is FitBegin


def test_executor_can_be_swapped_and_is_checked() -> None:
    learner = make_test_learner()
    executor = RecordingExecutor()
    learner.executor = executor
    learner.fit(1)
    assert executor.runs
    with pytest.raises(TypeError, match=r"expects an object with run\(plan, event, phase\), such as SerialExecutor\(\); got str\."):
        learner.executor = "serial"  # type: ignore[assignment]
    assert learner.executor is executor


def test_serial_executor_repr() -> None:
    assert repr(SerialExecutor()) == "SerialExecutor()"


def test_add_callback_names_itself_when_given_a_class() -> None:
    learner = make_test_learner()
    with pytest.raises(TypeError, match=r"add_callback\(callback\) got the class Recorder; pass an instance: Recorder\(\)\."):
        learner.add_callback(Recorder)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"replace_callback\(callback\) got a int, not a Callback"):
        learner.replace_callback(3)  # type: ignore[arg-type]


def test_fit_begin_carries_the_data_fit_runs_on() -> None:
    from cadence.events import FitBegin

    seen: list[object] = []

    class Watch(Callback):
        @on(FitBegin)
        def fit_begin(self, event: FitBegin, phase: object, learner: object) -> None:
            seen.append(event.data)

    learner = make_test_learner(Watch())
    default_data = learner.data
    learner.fit(0)
    other = ([(torch.ones(2, 1), torch.ones(2, 1))], None)
    learner.fit(0, data=other)
    assert seen == [default_data, other]
