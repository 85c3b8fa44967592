"""Callbacks: @on registration, handler choice by (event, phase), and the base class defaults."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
from helpers import Entry

import cadence
from cadence import READ, WRITE, Callback, DeclarationError, NoConflict, RunFirst, Unresolvable, on
from cadence.access import AccessSet
from cadence.callback import Handler, access_at
from cadence.events import BackwardBegin, BatchBegin, BatchEnd, EpochBegin, EpochEnd, Event, FitBegin, LossBegin
from cadence.phases import Phase, TrainingPhase, ValidationPhase
from cadence.testing import make_test_learner


@dataclass(frozen=True)
class FineTuningPhase(TrainingPhase):
    """A user subclass of TrainingPhase."""

    name: ClassVar[str] = "finetune"


class Logger(Callback):
    """Handles BatchEnd in every phase and, more specifically, in training phases."""

    def __init__(self, log: list[Entry]) -> None:
        self.log = log

    @on(BatchEnd)
    def any_phase(self, event: Event, phase: Phase, learner: Any) -> None:
        self.log.append((type(event), type(phase), "any_phase"))

    @on(BatchEnd, phase=TrainingPhase)
    def training(self, event: Event, phase: Phase, learner: Any) -> None:
        self.log.append((type(event), type(phase), "training"))


def test_on_registers_handlers() -> None:
    assert Logger.handlers == (
        Handler(BatchEnd, Phase, "any_phase"),
        Handler(BatchEnd, TrainingPhase, "training"),
    )


def test_handlers_are_called_with_event_phase_and_view() -> None:
    calls: list[tuple[Any, Any]] = []

    class Spy(Callback):
        @on(FitBegin)
        def begin(self, event: Event, phase: Phase, learner: Any) -> None:
            calls.append((event, phase))

    make_test_learner(Spy()).fit(2)
    ((event, phase),) = calls
    assert isinstance(event, FitBegin) and event.n_epochs == 2
    assert phase == Phase()


def test_most_specific_handler_wins(log: list[Entry]) -> None:
    learner = make_test_learner(Logger(log), n_batches=1)
    learner.fit(1)
    assert log == [(BatchEnd, TrainingPhase, "training"), (BatchEnd, ValidationPhase, "any_phase")]


def test_handler_for_a_phase_runs_for_its_subclasses(log: list[Entry]) -> None:
    learner = make_test_learner(Logger(log), n_batches=2)
    learner.epoch(FineTuningPhase(), learner.data[0])  # type: ignore[index]
    assert log == [(BatchEnd, FineTuningPhase, "training")] * 2


def test_handler_for_event_base_class_runs_for_every_event() -> None:
    class Everything(Callback):
        @on(Event, phase=ValidationPhase)
        def every(self, event: Event, phase: Phase, learner: Any) -> None:
            pass

    cb = Everything()
    assert cb.handler_for(BatchBegin, ValidationPhase) == "every"
    assert cb.handler_for(BatchBegin, TrainingPhase) is None


def test_handler_for_picks_by_event_and_phase() -> None:
    cb = Logger([])
    assert cb.handler_for(BatchEnd, TrainingPhase) == "training"
    assert cb.handler_for(BatchEnd, FineTuningPhase) == "training"
    assert cb.handler_for(BatchEnd, ValidationPhase) == "any_phase"
    assert cb.handler_for(BatchEnd, Phase) == "any_phase"
    assert cb.handler_for(LossBegin, TrainingPhase) is None


def test_one_method_may_carry_several_on(log: list[Entry]) -> None:
    class Both(Callback):
        @on(BatchBegin, phase=TrainingPhase)
        @on(EpochEnd, phase=ValidationPhase)
        def record(self, event: Event, phase: Phase, learner: Any) -> None:
            log.append((type(event), type(phase), "record"))

    assert {(h.event, h.phase) for h in Both.handlers} == {(BatchBegin, TrainingPhase), (EpochEnd, ValidationPhase)}
    make_test_learner(Both(), n_batches=2).fit(1)
    assert log == [
        (BatchBegin, TrainingPhase, "record"),
        (BatchBegin, TrainingPhase, "record"),
        (EpochEnd, ValidationPhase, "record"),
    ]


def test_ambiguous_handlers_are_an_error_at_class_creation() -> None:
    with pytest.raises(
        DeclarationError,
        match=(
            r"Ambiguous has two handlers for BatchEnd in TrainingPhase and neither is more specific: "
            r"by_event \(@on\(BatchEnd, phase=Phase\)\) and by_phase \(@on\(Event, phase=TrainingPhase\)\)\. "
            r"Add a handler with @on\(BatchEnd, phase=TrainingPhase\) that decides\."
        ),
    ):

        class Ambiguous(Callback):
            @on(BatchEnd)
            def by_event(self, event: Event, phase: Phase, learner: Any) -> None: ...

            @on(Event, phase=TrainingPhase)
            def by_phase(self, event: Event, phase: Phase, learner: Any) -> None: ...


def test_the_suggested_handler_settles_an_ambiguity() -> None:
    class Settled(Callback):
        @on(BatchEnd)
        def by_event(self, event: Event, phase: Phase, learner: Any) -> None: ...

        @on(Event, phase=TrainingPhase)
        def by_phase(self, event: Event, phase: Phase, learner: Any) -> None: ...

        @on(BatchEnd, phase=TrainingPhase)
        def decides(self, event: Event, phase: Phase, learner: Any) -> None: ...

    cb = Settled()
    assert cb.handler_for(BatchEnd, TrainingPhase) == "decides"
    assert cb.handler_for(BatchEnd, ValidationPhase) == "by_event"
    assert cb.handler_for(LossBegin, TrainingPhase) == "by_phase"


def test_one_method_registered_twice_is_never_ambiguous() -> None:
    class Same(Callback):
        @on(BatchEnd)
        @on(Event, phase=TrainingPhase)
        def handle(self, event: Event, phase: Phase, learner: Any) -> None: ...

    assert Same().handler_for(BatchEnd, TrainingPhase) == "handle"


def test_two_methods_for_the_same_event_and_phase_are_an_error() -> None:
    with pytest.raises(
        DeclarationError,
        match=r"Twice handles BatchEnd in TrainingPhase twice, with first and second; keep one handler per \(event, phase\)\.",
    ):

        class Twice(Callback):
            @on(BatchEnd, phase=TrainingPhase)
            def first(self, event: Event, phase: Phase, learner: Any) -> None: ...

            @on(BatchEnd, phase=TrainingPhase)
            def second(self, event: Event, phase: Phase, learner: Any) -> None: ...


def test_ambiguity_across_inheritance_is_caught_in_the_subclass() -> None:
    class Base(Callback):
        @on(BatchEnd)
        def by_event(self, event: Event, phase: Phase, learner: Any) -> None: ...

    with pytest.raises(DeclarationError, match=r"Child has two handlers for BatchEnd in TrainingPhase"):

        class Child(Base):
            @on(Event, phase=TrainingPhase)
            def by_phase(self, event: Event, phase: Phase, learner: Any) -> None: ...


def test_overriding_a_handler_without_on_keeps_the_registration(log: list[Entry]) -> None:
    class Child(Logger):
        def training(self, event: Event, phase: Phase, learner: Any) -> None:
            self.log.append((type(event), type(phase), "child"))

    assert Child.handlers == Logger.handlers
    learner = make_test_learner(Child(log), n_batches=1)
    learner.fit(1, data=(learner.data[0], None))  # type: ignore[index]
    assert log == [(BatchEnd, TrainingPhase, "child")]


def test_overriding_a_handler_with_on_replaces_the_registration() -> None:
    class Child(Logger):
        @on(EpochEnd)
        def training(self, event: Event, phase: Phase, learner: Any) -> None: ...

    assert Child([]).handler_for(BatchEnd, TrainingPhase) == "any_phase"
    assert Child([]).handler_for(EpochEnd, TrainingPhase) == "training"


@pytest.mark.parametrize("event", [BatchEnd(), "BatchEnd", int, None])
def test_on_rejects_what_is_not_an_event_class(event: Any) -> None:
    with pytest.raises(TypeError, match=r"@on expects an Event class such as BatchEnd; got "):
        on(event)


@pytest.mark.parametrize("phase", [TrainingPhase(), "train", int, None])
def test_on_rejects_what_is_not_a_phase_class(phase: Any) -> None:
    with pytest.raises(TypeError, match=r"@on\(\.\.\., phase=\.\.\.\) expects a Phase class such as TrainingPhase; got "):
        on(BatchEnd, phase=phase)


def test_callback_defaults() -> None:
    cb = Callback()
    other = Callback()
    assert cb.state_access == {}
    assert cb.run_after == ()
    assert cb.handlers == ()
    assert cb.resolve_conflict(other) is NotImplemented
    assert cb.state_dict() == {}
    cb.load_state_dict({})
    assert repr(cb) == "Callback()"


def test_stateless_callback_refuses_state() -> None:
    with pytest.raises(ValueError, match=r"Callback keeps no state but was given \['step'\]; implement load_state_dict to restore it\."):
        Callback().load_state_dict({"step": 1})


def test_resolutions_compare_by_meaning() -> None:
    a, b = Callback(), Callback()
    assert NoConflict() == NoConflict()
    assert Unresolvable() == Unresolvable()
    assert RunFirst(a) == RunFirst(a)
    assert RunFirst(a) != RunFirst(b)
    assert hash(RunFirst(a)) == hash(RunFirst(a))
    assert NoConflict() != Unresolvable()


def test_a_missing_entry_suggests_a_producer_that_can_be_built() -> None:
    import cadence.callbacks.scheduler  # noqa: F401  (registers its entry)
    from cadence import READ, MissingStateError, schedules
    from cadence.callback import PRODUCERS

    class Watcher(Callback):
        state_access = {"cbstate.hyperparams": READ}

    expected = "Watcher reads cbstate.hyperparams, but no callback writes it.\nAdd Scheduler(lr=cosine(0.1, 0.001)), which writes cbstate.hyperparams."
    with pytest.raises(MissingStateError, match=f"^{re.escape(expected)}$"):
        make_test_learner(Watcher())
    namespace = {**vars(cadence), **vars(cadence.callbacks.scheduler), **vars(schedules)}
    for entry, example in PRODUCERS.items():
        if example.startswith("a "):
            continue
        reader = type("Reader", (Callback,), {"state_access": {f"cbstate.{entry}": READ}})
        make_test_learner(eval(example, namespace), reader()).fit(1)  # the hint works as written


def test_a_producer_needing_arguments_is_suggested_by_name() -> None:
    from cadence import READ, WRITE, MissingStateError
    from cadence.callback import PRODUCERS

    class Needy(Callback):
        __module__ = "cadence.callbacks.needy"  # as a built-in
        state_access = {"cbstate.needy_notes": WRITE}

        def __init__(self, folder: str, *, every: int = 1) -> None:
            self.folder = folder

    class Reader(Callback):
        state_access = {"cbstate.needy_notes": READ}

    try:
        assert PRODUCERS["needy_notes"] == "a Needy callback"
        with pytest.raises(MissingStateError, match=r"\nAdd a Needy callback, which writes cbstate\.needy_notes\.$"):
            make_test_learner(Reader())
    finally:
        PRODUCERS.pop("needy_notes", None)


# ---- per-handler access ----------------------------------------------------------------------


def test_on_records_a_handlers_own_access() -> None:
    class Penalty(Callback):
        state_access = {"model": WRITE}

        @on(BackwardBegin, phase=TrainingPhase, access={"batch.loss": WRITE})
        def add(self, event: Event, phase: Phase, learner: Any) -> None: ...

        @on(EpochBegin, phase=TrainingPhase)
        def freeze(self, event: Event, phase: Phase, learner: Any) -> None: ...

    assert [h.access for h in Penalty.handlers] == [{"batch.loss": WRITE}, None]
    assert access_at(Penalty(), BackwardBegin, TrainingPhase) == AccessSet(writes=(("batch", "loss"),))
    assert access_at(Penalty(), EpochBegin, TrainingPhase) == AccessSet(writes=(("model",),))
    assert access_at(Penalty(), BatchEnd, TrainingPhase) is None


def test_a_malformed_handler_access_names_the_handler() -> None:
    with pytest.raises(TypeError, match=r'@on\(BatchEnd, access=\.\.\.\) of .*Bad\.show expects a dict of paths to READ or WRITE, e\.g\. access=\{"batch\.loss": WRITE\}; got list'):

        class Bad(Callback):
            @on(BatchEnd, access=["batch.loss"])  # type: ignore[arg-type]
            def show(self, event: Event, phase: Phase, learner: Any) -> None: ...


def test_one_method_with_two_accesses_for_the_same_events_is_an_error() -> None:
    with pytest.raises(DeclarationError, match=r"Twice\.show has @on\(BatchEnd, phase=TrainingPhase\) and @on\(BatchEnd, phase=Phase\) with different access, and both can handle the same event; give both the same access=, or split the method in two"):

        class Twice(Callback):
            @on(BatchEnd, access={"batch.loss": READ})
            @on(BatchEnd, phase=TrainingPhase, access={"batch.y": READ})
            def show(self, event: Event, phase: Phase, learner: Any) -> None: ...

    class Apart(Callback):  # different events never meet: different access is fine
        @on(BatchEnd, access={"batch.loss": READ})
        @on(EpochEnd, access={})
        def show(self, event: Event, phase: Phase, learner: Any) -> None: ...

    assert len(Apart.handlers) == 2

    class Spelt(Callback):  # the same declaration, nested and dotted: the same access
        @on(BatchEnd, access={"batch": {"loss": READ}, "model": READ})
        @on(BatchEnd, phase=TrainingPhase, access={"model": READ, "batch.loss": READ})
        def show(self, event: Event, phase: Phase, learner: Any) -> None: ...

    assert len(Spelt.handlers) == 2


class Muted(Callback):
    """Overrides handler_for: while muted, BatchEnd goes to ``quiet``, a method of its own."""

    state_access = {"model": READ}

    def __init__(self, muted: bool) -> None:
        self.muted = muted

    @on(BatchEnd, access={"batch.loss": WRITE})
    def loud(self, event: Event, phase: Phase, learner: Any) -> None: ...

    @on(EpochEnd, access={"cbstate": READ})
    def quiet(self, event: Event, phase: Phase, learner: Any) -> None: ...

    def handler_for(self, event: type[Event], phase: type[Phase]) -> str | None:
        if self.muted and issubclass(event, BatchEnd):
            return "quiet"
        return super().handler_for(event, phase)


def test_the_declaration_of_the_method_an_overridden_handler_for_picks_applies() -> None:
    assert access_at(Muted(False), BatchEnd, TrainingPhase) == AccessSet(writes=(("batch", "loss"),))
    assert access_at(Muted(True), BatchEnd, TrainingPhase) == AccessSet(reads=(("cbstate",),))
    learner = make_test_learner(Muted(True))
    (plan,) = learner.plans(BatchEnd, TrainingPhase)
    assert plan.labels == ("Muted.quiet",) and plan.accesses == (AccessSet(reads=(("cbstate",),)),)
