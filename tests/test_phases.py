"""Phases: names, equality, the events each fires, batch fields and the epoch context."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
import torch

from cadence import READ, WRITE, Callback, on
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
from cadence.phases import Phase, TrainingPhase, ValidationPhase, known_batch_fields, unpack
from cadence.state import Batch
from cadence.testing import make_test_learner


def test_phase_names() -> None:
    assert Phase.name == "fit"
    assert TrainingPhase.name == "train"
    assert ValidationPhase.name == "valid"


def test_equal_phases_hash_the_same_so_they_key_dicts() -> None:
    table = {TrainingPhase(): "t", ValidationPhase(): "v"}
    assert TrainingPhase() == TrainingPhase()
    assert hash(TrainingPhase()) == hash(TrainingPhase())
    assert table[TrainingPhase()] == "t"
    assert TrainingPhase() != ValidationPhase()
    assert Phase() != TrainingPhase()


def test_phases_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainingPhase().name = "other"  # type: ignore[misc]


def test_each_phase_declares_its_events_in_firing_order() -> None:
    assert Phase.events == (FitBegin, FitEnd)
    assert TrainingPhase.events == (
        EpochBegin,
        BatchBegin,
        LossBegin,
        BackwardBegin,
        BackwardEnd,
        BatchEnd,
        EpochEnd,
    )
    assert ValidationPhase.events == (EpochBegin, BatchBegin, LossBegin, BatchEnd, EpochEnd)


@pytest.mark.parametrize("phase", [TrainingPhase, ValidationPhase])
def test_phase_docstrings_list_their_events(phase: type[Phase]) -> None:
    for event in phase.events:
        assert event.__name__ in (phase.__doc__ or "")


def test_unpack_accepts_pairs() -> None:
    assert unpack((1, 2)) == (1, 2)
    assert unpack([1, 2]) == (1, 2)


@pytest.mark.parametrize(
    ("batch", "shown", "fix"),
    [
        ((1, 2, 3), "a tuple of length 3", r"adapter=TupleBatches\(n_inputs=2\)"),
        (torch.zeros(2), "a Tensor", r"subclass cadence\.batches\.BatchAdapter"),
        ({"x": 1}, "a dict with the keys 'x'", r'adapter=DictBatches\(target="labels"\)'),
    ],
)
def test_unpack_says_what_a_batch_should_look_like(batch: object, shown: str, fix: str) -> None:
    with pytest.raises(TypeError, match=rf"Each batch must be an \(x, y\) pair; got {shown}\. .*DataLoader\(TensorDataset\(x, y\).*{fix}"):
        unpack(batch)


def test_learner_rejects_a_batch_that_is_not_a_pair() -> None:
    learner = make_test_learner()
    with pytest.raises(TypeError, match=r"Make the data yield \(inputs, targets\)"):
        learner.fit(1, data=([torch.zeros(2, 1)], None))


def test_plain_phase_has_no_step() -> None:
    learner = make_test_learner()
    with pytest.raises(NotImplementedError, match=r"Phase does not process batches; run epochs with TrainingPhase\(\)"):
        Phase().step(learner, (torch.zeros(1, 1), torch.zeros(1, 1)))


def test_known_batch_fields_are_the_batch_dataclass_fields() -> None:
    assert {"x", "y", "y_pred", "loss"} <= known_batch_fields()


@dataclass(slots=True)
class NoisyBatch(Batch):
    noise: Any = None


@dataclass(frozen=True)
class NoisyTrainingPhase(TrainingPhase):
    """A training phase whose batches also carry ``batch.noise``."""

    name: ClassVar[str] = "noisy"
    batch_type: ClassVar[type[Batch]] = NoisyBatch

    def step(self, loop: Any, batch: object) -> None:
        loop.batch.noise = 0.5
        super().step(loop, batch)


def test_a_custom_batch_type_adds_batch_fields() -> None:
    assert "noise" in known_batch_fields()


def test_a_custom_phase_runs_with_its_own_batch_type() -> None:
    seen: list[float] = []

    class NoiseReader(Callback):
        state_access = {"batch.noise": READ, "batch.loss": WRITE}

        @on(BackwardBegin, phase=NoisyTrainingPhase)
        def read(self, event: Event, phase: Phase, learner: Any) -> None:
            seen.append(learner.batch.noise)

    learner = make_test_learner(NoiseReader(), n_batches=2)
    learner.epoch(NoisyTrainingPhase(), learner.data[0])  # type: ignore[index]
    assert seen == [0.5, 0.5]
    assert isinstance(learner.batch, NoisyBatch) and learner.batch.noise is None  # cleared after the epoch
    learner.step(NoisyTrainingPhase(), learner.data[0][0])  # type: ignore[index]
    assert learner.batch.noise == 0.5  # type: ignore[attr-defined]
    # Back to a plain phase: the richer batch still serves it.
    learner.fit(1)


def test_validation_epoch_runs_in_eval_mode_without_gradients() -> None:
    seen: list[tuple[bool, bool]] = []

    class Mode(Callback):
        state_access = {"model": READ}

        @on(Event, phase=ValidationPhase)
        def check(self, event: Event, phase: Phase, learner: Any) -> None:
            seen.append((learner.model.training, torch.is_grad_enabled()))

    learner = make_test_learner(Mode(), n_batches=2)
    learner.fit(1)
    assert len(seen) == 2 + 3 * 2  # EpochBegin, EpochEnd and three events per batch
    assert set(seen) == {(False, False)}
    assert learner.model.training
    assert torch.is_grad_enabled()


@pytest.mark.parametrize("training", [True, False])
def test_validation_restores_the_previous_mode(training: bool) -> None:
    learner = make_test_learner(n_batches=1)
    learner.model.train(training)
    learner.epoch(ValidationPhase(), learner.data[0])  # type: ignore[index]
    assert learner.model.training is training


def test_validation_restores_the_mode_when_a_handler_fails() -> None:
    class Boom(Callback):
        @on(BatchEnd, phase=ValidationPhase)
        def fail(self, event: Event, phase: Phase, learner: Any) -> None:
            raise RuntimeError("boom")

    learner = make_test_learner(Boom(), n_batches=1)
    with pytest.raises(RuntimeError, match="boom"):
        learner.epoch(ValidationPhase(), learner.data[0])  # type: ignore[index]
    assert learner.model.training
    assert torch.is_grad_enabled()


def test_training_epoch_puts_the_model_in_train_mode() -> None:
    seen: list[bool] = []

    class Mode(Callback):
        state_access = {"model": READ}

        @on(BatchBegin, phase=TrainingPhase)
        def check(self, event: Event, phase: Phase, learner: Any) -> None:
            seen.append(learner.model.training)

    learner = make_test_learner(Mode(), n_batches=2)
    learner.model.eval()
    learner.fit(1)
    assert seen == [True, True]
    # Validation gave train mode back after its epoch, although the model was in eval before fit.
    assert learner.model.training


def test_a_handler_may_keep_the_model_in_eval_mode_for_training() -> None:
    seen: list[bool] = []

    class Frozen(Callback):
        state_access = {"model": READ}

        @on(EpochBegin, phase=TrainingPhase)
        def freeze(self, event: Event, phase: Phase, learner: Any) -> None:
            learner.model.eval()

        @on(BatchBegin, phase=TrainingPhase)
        def check(self, event: Event, phase: Phase, learner: Any) -> None:
            seen.append(learner.model.training)

    learner = make_test_learner(Frozen(), n_batches=2)
    learner.fit(1, data=(learner.data[0], None))  # type: ignore[index]
    assert seen == [False, False]


class PlainBatch(Batch):  # a Batch subclass that forgot @dataclass
    noise: Any = None


class NotABatch:
    pass


@pytest.mark.parametrize("batch_type", [NotABatch, PlainBatch, dict])
def test_batch_type_must_be_a_dataclass_subclass_of_batch(batch_type: type) -> None:
    expected = (
        r"^BadPhase\.batch_type must be a dataclass subclass of Batch, e\.g\. @dataclass\(slots=True\) "
        r"class GanBatch\(Batch\): fake: Any = None; got <class '.*"
    )
    with pytest.raises(TypeError, match=expected):
        type("BadPhase", (TrainingPhase,), {"batch_type": batch_type})
