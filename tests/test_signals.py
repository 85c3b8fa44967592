"""Control flow: CancelBatch, CancelEpoch, CancelFit, signal scope, and how fit ends."""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch
from helpers import Entry, RecordingCallback

from cadence import CancelBatch, CancelEpoch, CancelFit, Callback, Recorder, on
from cadence.errors import CancelSignal, SignalScopeError
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
from cadence.testing import make_test_learner


class Raiser(Callback):
    """Raises ``error`` at ``event`` in ``phase``, on the batches whose index is in ``batches``."""

    def __init__(
        self,
        error: BaseException,
        event: type[Event],
        phase: type[Phase] = Phase,
        batches: set[int] | None = None,
    ) -> None:
        self.error, self.event, self.phase, self.batches = error, event, phase, batches
        self.index = -1

    @on(Event)
    def maybe_raise(self, event: Event, phase: Phase, learner: Any) -> None:
        if isinstance(event, BatchBegin) and isinstance(phase, TrainingPhase):
            self.index += 1
        if isinstance(event, self.event) and isinstance(phase, self.phase):
            if self.batches is None or self.index in self.batches:
                raise self.error


def seen(log: list[Entry], name: str = "rec") -> list[tuple[type[Event], type[Phase]]]:
    return [(event, phase) for event, phase, who in log if who == name]


SCOPE_HINT = (
    "where it has nothing to cancel. CancelBatch works from BatchBegin to BackwardEnd (LossBegin in "
    "validation), CancelEpoch from EpochBegin to EpochEnd, and CancelFit anywhere but FitEnd."
)


# ---- CancelBatch ---------------------------------------------------------------------------


@pytest.mark.parametrize("event", [BatchBegin, LossBegin, BackwardBegin, BackwardEnd])
def test_cancel_batch_before_the_step_skips_the_rest_of_the_batch(log: list[Entry], event: type[Event]) -> None:
    recorder = Recorder()
    learner = make_test_learner(
        Raiser(CancelBatch("skip"), event, TrainingPhase), RecordingCallback(log), recorder, n_batches=3
    )
    before = learner.model.weight.detach().clone()
    assert learner.fit(1).stopped is None
    assert torch.equal(learner.model.weight, before)  # no optimizer step
    train = [e for e, p in seen(log) if p is TrainingPhase]
    order = [BatchBegin, LossBegin, BackwardBegin, BackwardEnd]
    # The raiser runs first, so the recording callback does not see the cancelled event.
    per_batch = order[: order.index(event)]
    assert train == [EpochBegin, *(per_batch * 3), EpochEnd]
    history = learner.cbstate.history
    assert history[TrainingPhase()].steps == 0
    assert history[TrainingPhase()].epochs == 1
    assert history[ValidationPhase()].steps == 3  # validation is not affected


def test_cancel_batch_skips_one_batch_only() -> None:
    learner = make_test_learner(Raiser(CancelBatch(), BatchBegin, TrainingPhase, batches={1}), Recorder(), n_batches=4)
    learner.fit(2)
    history = learner.cbstate.history[TrainingPhase()]
    # The second batch of the first epoch only: the raiser counts batches across epochs.
    assert (history.epochs, history.steps, history.steps_in_epoch) == (2, 7, 4)


def test_cancel_batch_in_validation(log: list[Entry]) -> None:
    learner = make_test_learner(Raiser(CancelBatch(), LossBegin, ValidationPhase), RecordingCallback(log), Recorder(), n_batches=2)
    learner.fit(1)
    assert [e for e, p in seen(log) if p is ValidationPhase] == [EpochBegin, BatchBegin, BatchBegin, EpochEnd]
    assert learner.cbstate.history[ValidationPhase()].steps == 0


@pytest.mark.parametrize("phase", [TrainingPhase, ValidationPhase])
def test_cancel_batch_at_batch_end_is_out_of_scope(log: list[Entry], phase: type[Phase]) -> None:
    # At BatchEnd the optimizer step (or the evaluation) is done: nothing is left to cancel, and
    # handlers before the raiser have already counted the batch.
    learner = make_test_learner(Recorder(), Raiser(CancelBatch(), BatchEnd, phase), RecordingCallback(log), n_batches=2)
    message = f"CancelBatch raised by Raiser.maybe_raise at BatchEnd of {phase.__name__}, {SCOPE_HINT}"
    with pytest.raises(SignalScopeError, match=f"^{re.escape(message)}$") as info:
        learner.fit(1)
    assert isinstance(info.value.__cause__, CancelBatch)
    assert (BatchEnd, phase) not in seen(log)
    assert seen(log)[-1] == (FitEnd, Phase)


def test_cancel_batch_at_batch_end_of_a_single_step_is_out_of_scope() -> None:
    learner = make_test_learner(Raiser(CancelBatch(), BatchEnd, ValidationPhase))
    with pytest.raises(SignalScopeError, match=r"^CancelBatch raised by Raiser\.maybe_raise at BatchEnd of ValidationPhase, where it has nothing to cancel\. CancelBatch works from BatchBegin to BackwardEnd \(LossBegin in validation\)"):
        learner.step(ValidationPhase(), learner.data[0][0])  # type: ignore[index]
    assert learner.model.training  # the epoch context still restored train mode


# ---- CancelEpoch ---------------------------------------------------------------------------


def test_cancel_epoch_skips_the_rest_of_the_epoch_then_validates(log: list[Entry]) -> None:
    learner = make_test_learner(
        Raiser(CancelEpoch(), BatchEnd, TrainingPhase, batches={0}), RecordingCallback(log), Recorder(), n_batches=3
    )
    assert learner.fit(1).stopped is None
    assert seen(log) == [
        (FitBegin, Phase),
        (EpochBegin, TrainingPhase),
        (BatchBegin, TrainingPhase),
        (LossBegin, TrainingPhase),
        (BackwardBegin, TrainingPhase),
        (BackwardEnd, TrainingPhase),
        (EpochEnd, TrainingPhase),
        (EpochBegin, ValidationPhase),
        *[(e, ValidationPhase) for e in [BatchBegin, LossBegin, BatchEnd] * 3],
        (EpochEnd, ValidationPhase),
        (FitEnd, Phase),
    ]
    history = learner.cbstate.history
    assert history[TrainingPhase()].epochs == 1
    assert history[TrainingPhase()].steps == 0


def test_cancel_epoch_at_epoch_begin_runs_no_batch(log: list[Entry]) -> None:
    learner = make_test_learner(Raiser(CancelEpoch(), EpochBegin, TrainingPhase), RecordingCallback(log), n_batches=2)
    learner.fit(2)
    assert [e for e, p in seen(log) if p is TrainingPhase] == [EpochEnd, EpochEnd]
    assert [e for e, p in seen(log) if p is ValidationPhase].count(BatchEnd) == 4


def test_cancel_epoch_at_epoch_end_stops_the_remaining_handlers(log: list[Entry]) -> None:
    learner = make_test_learner(Raiser(CancelEpoch(), EpochEnd, TrainingPhase), RecordingCallback(log), n_batches=1)
    assert learner.fit(2).stopped is None
    assert (EpochEnd, TrainingPhase) not in seen(log)
    assert seen(log).count((EpochBegin, TrainingPhase)) == 2


# ---- CancelFit -----------------------------------------------------------------------------


def test_cancel_fit_returns_the_signal_and_fires_fit_end(log: list[Entry]) -> None:
    class Stopper(Callback):
        @on(BatchEnd, phase=TrainingPhase)
        def stop(self, event: Event, phase: Phase, learner: Any) -> None:
            raise CancelFit("loss is low enough")

    learner = make_test_learner(Stopper(), RecordingCallback(log), Recorder(), n_batches=3)
    result = learner.fit(5).stopped
    assert isinstance(result, CancelFit)
    assert result.reason == "loss is low enough"
    assert result.origin == "Stopper.stop"
    assert seen(log) == [
        (FitBegin, Phase),
        (EpochBegin, TrainingPhase),
        (BatchBegin, TrainingPhase),
        (LossBegin, TrainingPhase),
        (BackwardBegin, TrainingPhase),
        (BackwardEnd, TrainingPhase),
        (FitEnd, Phase),
    ]
    # The optimizer stepped before BatchEnd; the step is not undone, nor counted.
    assert learner.cbstate.history[TrainingPhase()].epochs == 0


def test_cancel_fit_in_validation_restores_train_mode() -> None:
    learner = make_test_learner(Raiser(CancelFit("enough"), BatchEnd, ValidationPhase), n_batches=1)
    result = learner.fit(3).stopped
    assert result is not None and result.reason == "enough"
    assert result.origin == "Raiser.maybe_raise"
    assert learner.model.training
    assert torch.is_grad_enabled()


def test_cancel_fit_at_fit_begin_runs_no_epoch(log: list[Entry]) -> None:
    learner = make_test_learner(Raiser(CancelFit("nothing to do"), FitBegin), RecordingCallback(log))
    result = learner.fit(3).stopped
    assert result is not None and result.reason == "nothing to do"
    assert seen(log) == [(FitEnd, Phase)]


def test_cancel_fit_at_epoch_end_fires_no_further_epoch_end(log: list[Entry]) -> None:
    learner = make_test_learner(RecordingCallback(log), Raiser(CancelFit(), EpochEnd, TrainingPhase), n_batches=1)
    learner.fit(3)
    assert seen(log)[-3:] == [(BatchEnd, TrainingPhase), (EpochEnd, TrainingPhase), (FitEnd, Phase)]
    assert (EpochBegin, ValidationPhase) not in seen(log)


def test_a_complete_fit_returns_none() -> None:
    assert make_test_learner(Recorder()).fit(2).stopped is None


# ---- signals out of scope ------------------------------------------------------------------


class Bad(Callback):
    def __init__(self, signal: CancelSignal, event: type[Event]) -> None:
        self.signal, self.event = signal, event

    @on(Event)
    def begin(self, event: Event, phase: Phase, learner: Any) -> None:
        if isinstance(event, self.event) and not isinstance(phase, ValidationPhase):
            raise self.signal


@pytest.mark.parametrize(
    ("signal", "event", "where"),
    [
        (CancelBatch(), EpochBegin, "at EpochBegin or EpochEnd of TrainingPhase"),
        (CancelBatch(), EpochEnd, "at EpochBegin or EpochEnd of TrainingPhase"),
        (CancelBatch(), FitBegin, "at FitBegin"),
        (CancelEpoch(), FitBegin, "at FitBegin"),
        (CancelFit(), FitEnd, "at FitEnd"),
        (CancelBatch(), FitEnd, "at FitEnd"),
    ],
)
def test_signal_out_of_scope_is_an_error_naming_the_handler(
    log: list[Entry], signal: CancelSignal, event: type[Event], where: str
) -> None:
    learner = make_test_learner(Bad(signal, event), RecordingCallback(log), n_batches=1)
    message = f"{type(signal).__name__} raised by Bad.begin {where}, {SCOPE_HINT}"
    with pytest.raises(SignalScopeError, match=f"^{re.escape(message)}") as info:
        learner.fit(1)
    assert info.value.__cause__ is signal
    if event is not FitEnd:
        assert seen(log)[-1] == (FitEnd, Phase)


# ---- exceptions ----------------------------------------------------------------------------


class Boom(Callback):
    @on(BatchEnd, phase=TrainingPhase)
    def fail(self, event: Event, phase: Phase, learner: Any) -> None:
        raise RuntimeError("boom")


def test_handler_exception_carries_a_note_and_fit_end_fires(log: list[Entry]) -> None:
    learner = make_test_learner(Boom(), RecordingCallback(log), n_batches=2)
    with pytest.raises(RuntimeError, match="^boom") as info:
        learner.fit(2)
    assert info.value.__notes__ == ["Raised by Boom.fail while handling BatchEnd in TrainingPhase."]
    assert seen(log)[-1] == (FitEnd, Phase)
    assert (BatchEnd, TrainingPhase) not in seen(log)


def test_handler_exception_at_fit_begin_still_fires_fit_end(log: list[Entry]) -> None:
    learner = make_test_learner(Raiser(ValueError("bad config"), FitBegin), RecordingCallback(log))
    with pytest.raises(ValueError, match="bad config") as info:
        learner.fit(1)
    assert info.value.__notes__ == ["Raised by Raiser.maybe_raise while handling FitBegin in Phase."]
    assert seen(log) == [(FitEnd, Phase)]


def test_model_exception_still_fires_fit_end(log: list[Entry]) -> None:
    learner = make_test_learner(RecordingCallback(log))
    with pytest.raises(RuntimeError):
        learner.fit(1, data=([(torch.zeros(2, 5), torch.zeros(2, 1))], None))
    assert seen(log)[-1] == (FitEnd, Phase)


def test_keyboard_interrupt_still_fires_fit_end(log: list[Entry]) -> None:
    learner = make_test_learner(Raiser(KeyboardInterrupt(), BatchBegin, TrainingPhase, batches={1}), RecordingCallback(log))
    with pytest.raises(KeyboardInterrupt):
        learner.fit(1)
    assert seen(log)[-1] == (FitEnd, Phase)


class Closer(Callback):
    @on(FitEnd)
    def close(self, event: Event, phase: Phase, learner: Any) -> None:
        raise OSError("disk full")


def test_fit_end_failure_while_another_exception_propagates_is_a_note() -> None:
    learner = make_test_learner(Boom(), Closer())
    with pytest.raises(RuntimeError, match="^boom") as info:
        learner.fit(1)
    assert info.value.__notes__ == [
        "Raised by Boom.fail while handling BatchEnd in TrainingPhase.",
        "FitEnd cleanup failed too: OSError: disk full",
    ]


def test_fit_end_failure_during_a_keyboard_interrupt_is_a_note() -> None:
    learner = make_test_learner(Raiser(KeyboardInterrupt(), EpochBegin, TrainingPhase), Closer())
    with pytest.raises(KeyboardInterrupt) as info:
        learner.fit(1)
    assert info.value.__notes__ == ["FitEnd cleanup failed too: OSError: disk full"]


def test_fit_end_failure_on_its_own_propagates() -> None:
    with pytest.raises(OSError, match="disk full") as info:
        make_test_learner(Closer()).fit(1)
    assert info.value.__notes__ == ["Raised by Closer.close while handling FitEnd in Phase."]


def test_fit_end_failure_after_cancel_fit_propagates() -> None:
    learner = make_test_learner(Raiser(CancelFit(), FitBegin), Closer())
    with pytest.raises(OSError, match="disk full"):
        learner.fit(1)


def test_signal_stops_the_remaining_handlers_of_the_event(log: list[Entry]) -> None:
    learner = make_test_learner(Raiser(CancelFit(), FitBegin), RecordingCallback(log, "later"))
    learner.fit(1)
    assert (FitBegin, Phase) not in seen(log, "later")
