"""The callback graph: ordering edges, conflicts, cycles, missing state, plans and explain()."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
from helpers import Entry, RecordingCallback, run_order

import cadence.graph
from cadence import (
    READ,
    WRITE,
    Callback,
    ConflictError,
    CycleError,
    DeclarationError,
    Metrics,
    MetricsPrinter,
    MissingStateError,
    NoConflict,
    ProgressPrinter,
    Recorder,
    RunFirst,
    StopOnNaNLoss,
    Unresolvable,
    on,
)
from cadence.events import BackwardEnd, BatchEnd, EpochBegin, Event, FitBegin, FitEnd, LossBegin
from cadence.phases import Phase, TrainingPhase, ValidationPhase
from cadence.testing import make_test_learner


class Handles(Callback):
    """Handles BatchEnd in every phase; subclasses set state_access and run_after."""

    @on(BatchEnd)
    def batch_end(self, event: Event, phase: Phase, learner: Any) -> None: ...


class A(Handles): ...


class B(Handles): ...


class C(Handles): ...


def names(learner: Any, event: type[Event] = BatchEnd, phase: type[Phase] = TrainingPhase) -> list[str]:
    return [label.split(".")[0] for label in run_order(learner, event, phase)]


# ---- run_after -----------------------------------------------------------------------------


def test_unconstrained_callbacks_keep_the_user_order() -> None:
    assert names(make_test_learner(C(), A(), B())) == ["C", "A", "B"]


def test_run_after_orders_by_type() -> None:
    class Late(Handles):
        run_after = (A,)

    learner = make_test_learner(Late(), B(), A())
    assert names(learner) == ["B", "A", "Late"]
    assert "       after A: Late.run_after includes A" in learner.explain(BatchEnd, TrainingPhase)


def test_run_after_matches_subclasses_with_isinstance() -> None:
    class Late(Handles):
        run_after = (Handles,)

    assert names(make_test_learner(Late(), A(), B())) == ["A", "B", "Late"]


def test_run_after_is_transitive_through_callbacks_that_do_not_handle_the_event() -> None:
    class Middle(Callback):
        run_after = (A,)

    class Last(Handles):
        run_after = (Middle,)

    learner = make_test_learner(Last(), Middle(), A())
    assert names(learner) == ["A", "Last"]
    assert "after A: run_after chain A → Middle → Last" in learner.explain(BatchEnd, TrainingPhase)


def test_run_after_chain_of_handlers_keeps_only_the_nearest_edges() -> None:
    class Middle(Handles):
        run_after = (A,)

    class Last(Handles):
        run_after = (Middle,)

    learner = make_test_learner(Last(), Middle(), A())
    assert learner.explain(BatchEnd, TrainingPhase) == (
        "BatchEnd in TrainingPhase:\n"
        "  1. A.batch_end\n"
        "  2. Middle.batch_end\n"
        "       after A: Middle.run_after includes A\n"
        "  3. Last.batch_end\n"
        "       after Middle: Last.run_after includes Middle"
    )


def test_an_edge_with_several_reasons_is_listed_once() -> None:
    class Writer(Handles):
        state_access = {"cbstate.counts": WRITE}

    class Reader(Handles):
        state_access = {"cbstate.counts": READ}
        run_after = (Writer,)

    learner = make_test_learner(Reader(), Writer())
    assert learner.explain(BatchEnd, TrainingPhase) == (
        "BatchEnd in TrainingPhase:\n"
        "  1. Writer.batch_end\n"
        "  2. Reader.batch_end\n"
        "       after Writer: Reader.run_after includes Writer; Writer writes cbstate.counts, Reader reads cbstate.counts"
    )


def long_chain(n: int) -> list[Callback]:
    """``n`` callbacks, each declaring run_after on the previous one's type; every other one
    handles BatchEnd."""
    kinds: list[type[Callback]] = []
    for i in range(n):
        base = Handles if i % 2 == 0 else Callback
        kinds.append(type(f"Link{i}", (base,), {"run_after": tuple(kinds[-1:])}))
    return [kind() for kind in reversed(kinds)]


def test_a_long_run_after_chain_plans_one_edge_per_handler() -> None:
    learner = make_test_learner(*long_chain(200))
    assert names(learner) == [f"Link{i}" for i in range(0, 200, 2)]
    reasons = re.findall(r"^       (after .*)$", learner.explain(BatchEnd, TrainingPhase), flags=re.MULTILINE)
    assert reasons == [f"after Link{i}: run_after chain Link{i} → Link{i + 1} → Link{i + 2}" for i in range(0, 198, 2)]


def test_run_after_is_global_across_events_and_phases() -> None:
    class Early(Callback):
        @on(LossBegin, phase=TrainingPhase)
        def loss_begin(self, event: Event, phase: Phase, learner: Any) -> None: ...

    class Late(Callback):
        run_after = (Early,)

        @on(BatchEnd, phase=ValidationPhase)
        @on(LossBegin, phase=TrainingPhase)
        def handle(self, event: Event, phase: Phase, learner: Any) -> None: ...

    learner = make_test_learner(Late(), Early())
    assert names(learner, LossBegin) == ["Early", "Late"]
    assert names(learner, BatchEnd, ValidationPhase) == ["Late"]


@pytest.mark.parametrize("run_after", [A, [A()], (A(),), ("A",)])
def test_run_after_must_be_a_tuple_of_classes(run_after: Any) -> None:
    class Late(Handles):
        pass

    Late.run_after = run_after
    with pytest.raises(DeclarationError, match=r"Late\.run_after must be a tuple of callback classes, e\.g\. run_after = \(Recorder,\); got "):
        make_test_learner(Late(), A())


def test_run_after_cycle_lists_each_edge_with_its_reason() -> None:
    class First(Handles):
        pass

    class Second(Handles):
        run_after = (First,)

    First.run_after = (Second,)
    expected = (
        "The callbacks' run_after declarations form a cycle:\n"
        "  Second runs before First: First.run_after includes Second\n"
        "  First runs before Second: Second.run_after includes First\n"
        "Remove one of these run_after entries."
    )
    with pytest.raises(CycleError, match=f"^{re.escape(expected)}$"):
        make_test_learner(First(), Second())


def test_run_after_cycle_through_a_callback_without_handlers_is_found() -> None:
    class Middle(Callback):
        run_after = (A,)

    class First(Handles):
        run_after = (Middle,)

    A.run_after = (First,)
    try:
        with pytest.raises(CycleError, match=r"A runs before Middle: Middle\.run_after includes A"):
            make_test_learner(A(), Middle(), First())
    finally:
        A.run_after = ()


# ---- handlers that can never fire ----------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "phase", "fix"),
    [
        (FitBegin, TrainingPhase, "FitBegin fires with the plain Phase(); use @on(FitBegin)."),
        (FitEnd, ValidationPhase, "FitEnd fires with the plain Phase(); use @on(FitEnd)."),
        (BackwardEnd, ValidationPhase, "BackwardEnd fires in TrainingPhase, LRFinderPhase; use @on(BackwardEnd, phase=TrainingPhase)."),
    ],
)
def test_a_handler_that_never_fires_is_rejected(event: type[Event], phase: type[Phase], fix: str) -> None:
    class Printer(Callback):
        @on(event, phase=phase)
        def start(self, event: Event, phase: Phase, learner: Any) -> None: ...

    expected = f"Printer.start handles {event.__name__} in {phase.__name__}, which never fires: {fix}"
    with pytest.raises(DeclarationError, match=f"^{re.escape(expected)}$"):
        make_test_learner(Printer())


def test_a_handler_for_an_event_no_phase_lists_is_rejected() -> None:
    class Unlisted(Event):
        __slots__ = ()

    class Listener(Callback):
        @on(Unlisted)
        def hear(self, event: Event, phase: Phase, learner: Any) -> None: ...

    expected = (
        "Listener.hear handles Unlisted in Phase, which never fires: no phase lists Unlisted in its "
        "events. Add it to the events of the phase that fires it."
    )
    with pytest.raises(DeclarationError, match=f"^{re.escape(expected)}$"):
        make_test_learner(Listener())


def test_a_handler_for_an_event_of_a_phase_subclass_is_accepted() -> None:
    class Swap(Event):
        __slots__ = ()

    @dataclass(frozen=True)
    class Swapping(TrainingPhase):
        name: ClassVar[str] = "swapping"
        events: ClassVar[tuple[type[Event], ...]] = (*TrainingPhase.events, Swap)

    class OnSwap(Callback):
        @on(Swap, phase=TrainingPhase)  # fires in Swapping, a TrainingPhase
        def swap(self, event: Event, phase: Phase, learner: Any) -> None: ...

        @on(Event, phase=ValidationPhase)  # a base event: some of its subclasses fire
        def any_validation_event(self, event: Event, phase: Phase, learner: Any) -> None: ...

    learner = make_test_learner(OnSwap())
    assert "OnSwap.any_validation_event" in learner.explain(phase=ValidationPhase)


# ---- automatic edges -----------------------------------------------------------------------


def test_writer_runs_before_reader_of_an_overlapping_path() -> None:
    class Reader(Handles):
        state_access = {"batch.loss": READ}

    class Writer(Handles):
        state_access = {"batch": WRITE}

    learner = make_test_learner(Reader(), Writer())
    assert names(learner) == ["Writer", "Reader"]
    assert "after Writer: Writer writes batch, Reader reads batch.loss" in learner.explain(BatchEnd, TrainingPhase)


def test_reader_of_a_whole_root_runs_after_writer_of_a_field() -> None:
    class Reader(Handles):
        state_access = {"batch": READ}

    class Writer(Handles):
        state_access = {"batch.y_pred": WRITE}

    assert names(make_test_learner(Reader(), Writer())) == ["Writer", "Reader"]


def test_distinct_fields_do_not_overlap() -> None:
    class Reader(Handles):
        state_access = {"batch.y": READ}

    class Writer(Handles):
        state_access = {"batch.x": WRITE}

    learner = make_test_learner(Reader(), Writer())
    assert names(learner) == ["Reader", "Writer"]
    assert "after" not in learner.explain(BatchEnd, TrainingPhase)


def test_automatic_edges_exist_only_where_both_handle_the_event() -> None:
    class Writer(Callback):
        state_access = {"batch.loss": WRITE}

        @on(LossBegin)
        def loss_begin(self, event: Event, phase: Phase, learner: Any) -> None: ...

    class Reader(Handles):
        state_access = {"batch.loss": READ}

    learner = make_test_learner(Reader(), Writer())
    assert names(learner) == ["Reader"]
    assert names(learner, LossBegin) == ["Writer"]


def test_automatic_edge_cycle_lists_each_edge_with_its_reason() -> None:
    class Left(Handles):
        state_access = {"batch.loss": WRITE, "cbstate.ready": READ}

    class Right(Handles):
        state_access = {"batch.loss": READ, "cbstate.ready": WRITE}

    expected = (
        "The callbacks form a cycle at BatchEnd in TrainingPhase:\n"
        "  Right runs before Left: Right writes cbstate.ready, Left reads cbstate.ready\n"
        "  Left runs before Right: Left writes batch.loss, Right reads batch.loss\n"
        "Break one of these edges: remove a run_after entry, or narrow a state_access declaration "
        "(READ where the callback does not write)."
    )
    with pytest.raises(CycleError, match=f"^{re.escape(expected)}$"):
        make_test_learner(Left(), Right())


def test_cycle_between_run_after_and_an_automatic_edge() -> None:
    class Reader(Handles):
        state_access = {"batch.loss": READ}

    class Writer(Handles):
        state_access = {"batch.loss": WRITE}
        run_after = (Reader,)

    with pytest.raises(CycleError, match=r"(?s)Writer runs before Reader: Writer writes batch\.loss, Reader reads batch\.loss.*Reader runs before Writer: Writer\.run_after includes Reader"):
        make_test_learner(Reader(), Writer())


# ---- write/write conflicts -----------------------------------------------------------------


class LossWriter(Handles):
    state_access = {"batch.loss": WRITE}


class BatchWriter(Handles):
    state_access = {"batch": WRITE}


def test_two_unordered_writers_conflict() -> None:
    expected = (
        "Write conflict between LossWriter and BatchWriter at BatchEnd in TrainingPhase:\n"
        "  - LossWriter writes batch.loss\n"
        "  - BatchWriter writes batch\n"
        "Nothing orders them. Implement resolve_conflict on one of them, e.g.\n\n"
        "    def resolve_conflict(self, other):  # in LossWriter\n"
        "        if isinstance(other, BatchWriter):\n"
        "            return RunFirst(self)  # or RunFirst(other), NoConflict(), Unresolvable()\n"
        "        return NotImplemented\n\n"
        "or add run_after = (LossWriter,) to BatchWriter."
    )
    with pytest.raises(ConflictError, match=f"^{re.escape(expected)}$"):
        make_test_learner(LossWriter(), BatchWriter())


def test_two_instances_of_one_writer_conflict() -> None:
    with pytest.raises(ConflictError, match=r"(?s)Write conflict between LossWriter#1 and LossWriter#2 .*Two LossWriter callbacks write the same state; keep one of them\."):
        make_test_learner(LossWriter(), LossWriter())


def test_writers_of_distinct_fields_do_not_conflict() -> None:
    class YWriter(Handles):
        state_access = {"batch.y": WRITE}

    assert names(make_test_learner(LossWriter(), YWriter())) == ["LossWriter", "YWriter"]


def test_writers_in_different_events_or_phases_do_not_conflict() -> None:
    class TrainWriter(Callback):
        state_access = {"batch.loss": WRITE}

        @on(BatchEnd, phase=TrainingPhase)
        def handle(self, event: Event, phase: Phase, learner: Any) -> None: ...

    class ValidWriter(TrainWriter):
        @on(BatchEnd, phase=ValidationPhase)
        def handle(self, event: Event, phase: Phase, learner: Any) -> None: ...

    class LossBeginWriter(TrainWriter):
        @on(LossBegin, phase=TrainingPhase)
        def handle(self, event: Event, phase: Phase, learner: Any) -> None: ...

    make_test_learner(TrainWriter(), ValidWriter(), LossBeginWriter())


def test_run_after_settles_a_write_conflict() -> None:
    class Second(LossWriter):
        run_after = (BatchWriter,)

    assert names(make_test_learner(Second(), BatchWriter())) == ["BatchWriter", "Second"]


class Answering(LossWriter):
    """A writer whose resolve_conflict returns ``answer`` (a callable of self and other)."""

    def __init__(self, answer: Any = None) -> None:
        self.answer = answer
        self.asked: list[Callback] = []

    def resolve_conflict(self, other: Callback) -> Any:
        self.asked.append(other)
        return NotImplemented if self.answer is None else self.answer(self, other)


class Other(Answering): ...


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        (lambda s, o: RunFirst(o), None, ["Other", "Answering"]),
        (lambda s, o: RunFirst(s), None, ["Answering", "Other"]),
        (None, lambda s, o: RunFirst(s), ["Other", "Answering"]),
        (None, lambda s, o: RunFirst(o), ["Answering", "Other"]),
        (lambda s, o: NoConflict(), None, ["Answering", "Other"]),
        (None, lambda s, o: NoConflict(), ["Answering", "Other"]),
        (lambda s, o: RunFirst(o), lambda s, o: RunFirst(s), ["Other", "Answering"]),
        (lambda s, o: NoConflict(), lambda s, o: NoConflict(), ["Answering", "Other"]),
    ],
)
def test_resolve_conflict_is_asked_of_both_sides(first: Any, second: Any, expected: list[str]) -> None:
    a, b = Answering(first), Other(second)
    learner = make_test_learner(a, b)
    assert names(learner) == expected
    assert names(learner, BatchEnd, ValidationPhase) == expected
    # Asked once per pair, although the pair conflicts in both phases.
    assert a.asked == [b]
    assert b.asked == [a]


def test_resolution_reason_is_explained() -> None:
    learner = make_test_learner(Answering(lambda s, o: RunFirst(o)), Other())
    assert (
        "after Other: Other and Answering both write batch.loss; resolve_conflict says RunFirst(Other)"
        in learner.explain(BatchEnd, TrainingPhase)
    )


def test_resolve_conflict_is_not_asked_when_something_orders_the_pair() -> None:
    class Ordered(Other):
        run_after = (Answering,)

    a, b = Answering(), Ordered()
    assert names(make_test_learner(a, b)) == ["Answering", "Ordered"]
    assert a.asked == b.asked == []


def test_unresolvable_pair_cannot_be_used_together() -> None:
    with pytest.raises(
        ConflictError,
        match=r"^Answering and Other cannot be used together: both write batch\.loss at BatchEnd in TrainingPhase and resolve_conflict says Unresolvable\(\)\. Remove one of them\.$",
    ):
        make_test_learner(Answering(lambda s, o: Unresolvable()), Other())


@pytest.mark.parametrize(
    ("first", "second", "shown"),
    [
        (lambda s, o: RunFirst(s), lambda s, o: RunFirst(s), r"RunFirst\(Answering\) and Other\.resolve_conflict returned RunFirst\(Other\)"),
        (lambda s, o: NoConflict(), lambda s, o: RunFirst(o), r"NoConflict\(\) and Other\.resolve_conflict returned RunFirst\(Answering\)"),
        (lambda s, o: Unresolvable(), lambda s, o: NoConflict(), r"Unresolvable\(\) and Other\.resolve_conflict returned NoConflict\(\)"),
    ],
)
def test_disagreeing_answers_are_a_conflict(first: Any, second: Any, shown: str) -> None:
    with pytest.raises(
        ConflictError,
        match=rf"^Answering and Other disagree on their order at BatchEnd in TrainingPhase: Answering\.resolve_conflict returned {shown}\. Make them agree, or return NotImplemented from one\.$",
    ):
        make_test_learner(Answering(first), Other(second))


def test_invalid_answer_is_a_declaration_error() -> None:
    with pytest.raises(
        DeclarationError,
        match=r"^Answering\.resolve_conflict\(Other\) returned 'first'; return NoConflict\(\), RunFirst\(self\), RunFirst\(other\), Unresolvable\(\) or NotImplemented\.$",
    ):
        make_test_learner(Answering(lambda s, o: "first"), Other())


def test_run_first_must_name_one_of_the_pair() -> None:
    stranger = A()
    with pytest.raises(
        DeclarationError,
        match=r"^Other\.resolve_conflict\(Answering\) returned RunFirst\(A\(\)\); RunFirst must name one of the two, RunFirst\(self\) or RunFirst\(other\)\.$",
    ):
        make_test_learner(Answering(), Other(lambda s, o: RunFirst(stranger)), stranger)


# ---- missing state -------------------------------------------------------------------------


class Printer(Callback):
    state_access = {"batch.loss": READ, "cbstate.history": READ}

    @on(BatchEnd)
    def print_loss(self, event: Event, phase: Phase, learner: Any) -> None:
        learner.cbstate.history[phase].steps_in_epoch


def test_missing_state_names_the_reader_and_suggests_the_producer() -> None:
    expected = "Printer reads cbstate.history, but no callback writes it.\nAdd Recorder(), which writes cbstate.history."
    with pytest.raises(MissingStateError, match=f"^{re.escape(expected)}$"):
        make_test_learner(Printer())


def test_missing_metrics_suggests_metrics() -> None:
    class Watcher(Callback):
        state_access = {"cbstate.metrics": READ}

    with pytest.raises(MissingStateError, match=r"Watcher reads cbstate\.metrics, but no callback writes it\.\nAdd Metrics\(\), which writes cbstate\.metrics\."):
        make_test_learner(Watcher())


def test_missing_unknown_state_says_how_to_produce_it() -> None:
    class Watcher(Callback):
        state_access = {"cbstate.notes.train": READ}

    with pytest.raises(
        MissingStateError,
        match=r'^Watcher reads cbstate\.notes\.train, but no callback writes it\.\nAdd the callback that creates it \(one that declares \{"cbstate\.notes": WRITE\}\)\.$',
    ):
        make_test_learner(Watcher())


def test_producers_satisfy_readers() -> None:
    make_test_learner(Printer(), Recorder()).fit(1)
    make_test_learner(Printer(), default_callbacks=True).fit(1)


def test_a_read_of_the_whole_cbstate_needs_no_producer() -> None:
    class Reader(Callback):
        state_access = {"cbstate": READ}

    make_test_learner(Reader())


def test_producer_init_runs_before_reader_init() -> None:
    order: list[str] = []

    class Producer(Callback):
        state_access = {"cbstate.notes": WRITE}

        def init(self, learner: Any) -> None:
            learner.cbstate.notes = ["made"]
            order.append("producer")

    class Consumer(Callback):
        state_access = {"cbstate.notes": READ}

        def init(self, learner: Any) -> None:
            order.append(f"consumer saw {learner.cbstate.notes}")

    make_test_learner(Consumer(), Producer())
    assert order == ["producer", "consumer saw ['made']"]


# ---- plans, adding and removing ------------------------------------------------------------


@pytest.fixture
def plan_count(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    count = [0]
    original = cadence.graph.CallbackGraph.plan

    def counting(self: Any, *args: Any) -> Any:
        count[0] += 1
        return original(self, *args)

    monkeypatch.setattr(cadence.graph.CallbackGraph, "plan", counting)
    return count


def test_plans_are_built_once_not_per_event(plan_count: list[int]) -> None:
    learner = make_test_learner(Printer(), n_batches=4, default_callbacks=True)
    built = plan_count[0]
    # One plan per (event, phase) pair the phases declare.
    assert built == len(Phase.events) + len(TrainingPhase.events) + len(ValidationPhase.events)
    learner.fit(2)
    assert plan_count[0] == built


@pytest.mark.parametrize(
    "change",
    [
        lambda learner: learner.add_callback(A()),
        lambda learner: learner.remove_callback(StopOnNaNLoss),
        lambda learner: learner.replace_callback(Metrics()),
    ],
)
def test_plans_are_rebuilt_when_callbacks_change(plan_count: list[int], change: Any) -> None:
    learner = make_test_learner(default_callbacks=True)
    built = plan_count[0]
    change(learner)
    assert plan_count[0] == 2 * built
    learner.fit(1)
    assert plan_count[0] == 2 * built


def test_added_callback_runs_in_the_next_fit(log: list[Entry]) -> None:
    learner = make_test_learner(n_batches=1)
    learner.fit(1)
    recorder = RecordingCallback(log)
    learner.add_callback(recorder)
    learner.fit(1)
    assert (BatchEnd, TrainingPhase, "rec") in log
    log.clear()
    assert learner.remove_callback(recorder) is recorder
    learner.fit(1)
    assert log == []


def test_plans_for_an_unseen_phase_are_built_when_its_epoch_starts(plan_count: list[int]) -> None:
    @dataclass(frozen=True)
    class Warmup(TrainingPhase):
        name: ClassVar[str] = "warmup"

    learner = make_test_learner(A())
    built = plan_count[0]
    learner.epoch(Warmup(), learner.data[0])  # type: ignore[index]
    assert plan_count[0] == built + len(Warmup.events)
    learner.epoch(Warmup(), learner.data[0])  # type: ignore[index]
    assert plan_count[0] == built + len(Warmup.events)
    assert "BatchEnd in Warmup:\n  1. A.batch_end" in learner.explain(phase=Warmup)
    learner.add_callback(B())
    assert "BatchEnd in Warmup:\n  1. A.batch_end\n  2. B.batch_end" in learner.explain(phase=Warmup)


def test_conflict_in_an_unseen_phase_comes_from_epoch_before_any_event(log: list[Entry]) -> None:
    @dataclass(frozen=True)
    class Special(TrainingPhase):
        name: ClassVar[str] = "special"

    class SpecialWriter(Callback):
        state_access = {"batch.loss": WRITE}

        @on(BatchEnd, phase=Special)
        def handle(self, event: Event, phase: Phase, learner: Any) -> None: ...

    learner = make_test_learner(RecordingCallback(log), SpecialWriter(), SpecialWriter())
    learner.fit(1)
    log.clear()
    for _ in range(2):
        with pytest.raises(ConflictError, match="Write conflict between SpecialWriter#1 and SpecialWriter#2 at BatchEnd in Special"):
            learner.epoch(Special(), learner.data[0])  # type: ignore[index]
    assert log == []


def test_failed_add_callback_leaves_the_learner_unchanged(log: list[Entry]) -> None:
    learner = make_test_learner(RecordingCallback(log), LossWriter(), n_batches=1)
    callbacks, explained = learner.callbacks, learner.explain()
    with pytest.raises(ConflictError, match="Write conflict between LossWriter and BatchWriter"):
        learner.add_callback(BatchWriter())
    assert learner.callbacks == callbacks
    assert learner.explain() == explained
    learner.fit(1)
    assert (BatchEnd, TrainingPhase, "rec") in log


def test_failed_init_leaves_the_learner_unchanged() -> None:
    class Broken(Handles):
        def init(self, learner: Any) -> None:
            raise RuntimeError("cannot open file")

    learner = make_test_learner(A())
    callbacks, explained = learner.callbacks, learner.explain()
    with pytest.raises(RuntimeError, match="cannot open file") as info:
        learner.add_callback(Broken())
    assert info.value.__notes__ == ["Raised by Broken.init; the learner's callbacks are unchanged."]
    assert learner.callbacks == callbacks
    assert learner.explain() == explained
    learner.fit(1)


def test_removing_a_producer_that_is_read_is_refused() -> None:
    learner = make_test_learner(Printer(), Recorder())
    callbacks = learner.callbacks
    with pytest.raises(MissingStateError, match="Printer reads cbstate.history"):
        learner.remove_callback(Recorder)
    assert learner.callbacks == callbacks


def test_same_instance_twice_is_rejected() -> None:
    a = A()
    with pytest.raises(ValueError, match=r"callbacks\[1\] \(A\(\)\) is listed twice; pass each instance once\."):
        make_test_learner(a, a)
    learner = make_test_learner(a)
    with pytest.raises(ValueError, match=r"A\(\) is already in this learner; add a new instance instead\."):
        learner.add_callback(a)
    with pytest.raises(ValueError, match=r"A\(\) is already in this learner; replace with a new instance instead\."):
        learner.replace_callback(a)
    assert learner.callbacks == (a,)


DEFAULTS = [Recorder, Metrics, ProgressPrinter, MetricsPrinter, StopOnNaNLoss]


def test_defaults_go_after_the_user_callbacks() -> None:
    learner = make_test_learner(A(), B(), default_callbacks=True)
    assert [type(cb) for cb in learner.callbacks] == [A, B, *DEFAULTS]
    assert [type(cb) for cb in make_test_learner(A(), default_callbacks=False).callbacks] == [A]


def test_defaults_are_not_duplicated() -> None:
    recorder = Recorder()
    learner = make_test_learner(recorder, default_callbacks=True)
    assert learner.callbacks[0] is recorder
    assert [type(cb) for cb in learner.callbacks] == DEFAULTS

    class MyMetrics(Metrics): ...

    learner = make_test_learner(MyMetrics(), default_callbacks=True)
    assert [type(cb) for cb in learner.callbacks] == [MyMetrics, *(t for t in DEFAULTS if t is not Metrics)]


def test_get_callback_returns_the_first_instance_or_none() -> None:
    first, second = A(), A()
    learner = make_test_learner(B(), first, second)
    assert learner.get_callback(A) is first
    assert learner.get_callback(Handles) is learner.callbacks[0]
    assert learner.get_callback(Recorder) is None


def test_remove_callback_by_instance_or_class() -> None:
    a, b, c = A(), B(), C()
    learner = make_test_learner(a, b, c)
    assert learner.remove_callback(b) is b
    assert learner.remove_callback(A) is a
    assert learner.callbacks == (c,)


def test_remove_callback_that_is_not_there_is_a_value_error() -> None:
    learner = make_test_learner(A(), B())
    with pytest.raises(ValueError, match=r"^No callback Recorder to remove; the learner has A, B\.$"):
        learner.remove_callback(Recorder)
    with pytest.raises(ValueError, match=r"^No callback C\(\) to remove; the learner has A, B\.$"):
        learner.remove_callback(C())
    with pytest.raises(ValueError, match=r"the learner has no callbacks\.$"):
        make_test_learner().remove_callback(A)


def test_replace_callback_keeps_the_position_and_runs_init() -> None:
    inits: list[Callback] = []

    class Tracked(Handles):
        def init(self, learner: Any) -> None:
            inits.append(self)

    old, new = Tracked(), Tracked()
    learner = make_test_learner(A(), old, B())
    assert learner.replace_callback(new) is old
    assert learner.callbacks[1] is new
    assert names(learner) == ["A", "Tracked", "B"]
    assert inits == [old, new]


def test_replace_callback_adds_when_there_is_none() -> None:
    learner = make_test_learner(A())
    c = C()
    assert learner.replace_callback(c) is None
    assert learner.callbacks[-1] is c


# ---- explain -------------------------------------------------------------------------------


def test_explain_prints_the_design_example_exactly() -> None:
    learner = make_test_learner(Printer(), Recorder())
    assert learner.explain(BatchEnd, TrainingPhase) == (
        "BatchEnd in TrainingPhase:\n"
        "  1. Recorder.batch_end\n"
        "  2. Printer.print_loss\n"
        "       after Recorder: Recorder writes cbstate.history, Printer reads cbstate.history"
    )


def test_explain_lists_every_non_empty_plan_in_firing_order() -> None:
    learner = make_test_learner(Printer(), Recorder())
    headers = [line for line in learner.explain().splitlines() if line and not line.startswith(" ")]
    assert headers == [
        "EpochBegin in TrainingPhase:",
        "BatchEnd in TrainingPhase:",
        "EpochEnd in TrainingPhase:",
        "EpochBegin in ValidationPhase:",
        "BatchEnd in ValidationPhase:",
        "EpochEnd in ValidationPhase:",
    ]
    assert "\n\nBatchEnd in TrainingPhase:\n" in learner.explain()


def test_explain_narrows_by_event_and_phase() -> None:
    learner = make_test_learner(Printer(), Recorder())
    assert learner.explain(phase=ValidationPhase()) == learner.explain(phase=ValidationPhase)
    assert learner.explain(phase=ValidationPhase).startswith("EpochBegin in ValidationPhase:")
    assert learner.explain(EpochBegin) == (
        "EpochBegin in TrainingPhase:\n  1. Recorder.epoch_begin\n\n"
        "EpochBegin in ValidationPhase:\n  1. Recorder.epoch_begin"
    )


def test_explain_without_handlers_says_so() -> None:
    assert make_test_learner().explain() == "No callback handles these events."
    assert make_test_learner(Printer(), Recorder()).explain(LossBegin) == "No callback handles these events."


def test_explain_puts_fit_end_last() -> None:
    class Bookends(Callback):
        @on(FitBegin)
        @on(FitEnd)
        @on(EpochBegin, phase=TrainingPhase)
        def handle(self, event: Event, phase: Phase, learner: Any) -> None: ...

    headers = [line for line in make_test_learner(Bookends()).explain().splitlines() if line.endswith(":")]
    assert headers == ["FitBegin in Phase:", "EpochBegin in TrainingPhase:", "FitEnd in Phase:"]


def test_resolution_applies_only_where_nothing_else_orders_the_pair() -> None:
    class First(Handles):
        state_access = {"batch.loss": WRITE, "batch.y_pred": WRITE}

    class Middle(Callback):
        state_access = {"batch.y_pred": READ, "cbstate.relay": WRITE}

        def init(self, learner: Any) -> None:
            learner.cbstate.relay = None

        @on(BatchEnd, phase=TrainingPhase)
        def relay(self, event: Event, phase: Phase, learner: Any) -> None: ...

    class Last(Handles):
        state_access = {"batch.loss": WRITE, "cbstate.relay": READ}

        def __init__(self) -> None:
            self.asked = 0

        def resolve_conflict(self, other: Callback) -> Any:
            self.asked += 1
            return RunFirst(self)

    last = Last()
    learner = make_test_learner(First(), Middle(), last)
    # Training: First → Middle → Last through automatic edges, whatever the answer says.
    assert names(learner) == ["First", "Middle", "Last"]
    # Validation: Middle is absent, so the answer orders the pair.
    assert names(learner, BatchEnd, ValidationPhase) == ["Last", "First"]
    assert last.asked == 1


def test_cycle_message_shows_only_the_cycle() -> None:
    class Downstream(Handles):
        run_after = (A,)

    class First(Handles):
        run_after = (A,)

    A.run_after = (First,)
    try:
        with pytest.raises(CycleError) as info:
            make_test_learner(Downstream(), A(), First())
    finally:
        A.run_after = ()
    lines = str(info.value).splitlines()
    assert lines[1:3] == [
        "  First runs before A: A.run_after includes First",
        "  A runs before First: First.run_after includes A",
    ]
    assert "Downstream" not in str(info.value)


# ---- per-handler access: edges and conflicts per plan ---------------------------------------------


class Freezer(Callback):
    """Writes the model at EpochBegin (freezing layers) and only reads the loss at BatchEnd."""

    state_access = {"model": WRITE, "batch.loss": READ}

    @on(EpochBegin, phase=TrainingPhase)
    def freeze(self, event: Event, phase: Phase, learner: Any) -> None: ...

    @on(BatchEnd, phase=TrainingPhase)
    def log(self, event: Event, phase: Phase, learner: Any) -> None: ...


class NarrowFreezer(Freezer):
    @on(BatchEnd, phase=TrainingPhase, access={"batch.loss": READ})
    def log(self, event: Event, phase: Phase, learner: Any) -> None: ...


class Averager(Callback):
    """Writes the model at every BatchEnd (a weight average)."""

    state_access = {"model": WRITE}

    @on(BatchEnd, phase=TrainingPhase)
    def average(self, event: Event, phase: Phase, learner: Any) -> None: ...


class ModelReader(Callback):
    @on(BatchEnd, phase=TrainingPhase, access={"model": READ})
    def read(self, event: Event, phase: Phase, learner: Any) -> None: ...

    @on(EpochBegin, phase=TrainingPhase, access={})
    def start(self, event: Event, phase: Phase, learner: Any) -> None: ...


def test_per_handler_access_decides_conflicts_per_plan() -> None:
    with pytest.raises(ConflictError, match=r"Write conflict between Freezer and Averager at BatchEnd in TrainingPhase"):
        make_test_learner(Freezer(), Averager())
    learner = make_test_learner(NarrowFreezer(), Averager())  # its BatchEnd handler writes nothing
    assert run_order(learner, BatchEnd, TrainingPhase) == ["NarrowFreezer.log", "Averager.average"]


def test_per_handler_access_decides_edges_per_plan() -> None:
    learner = make_test_learner(ModelReader(), Averager(), NarrowFreezer())
    assert run_order(learner, BatchEnd, TrainingPhase) == ["Averager.average", "ModelReader.read", "NarrowFreezer.log"]
    assert "after Averager: Averager writes model, ModelReader reads model" in learner.explain(BatchEnd)
    # At EpochBegin the reader declares nothing: the freezer, which writes the model, orders nothing.
    assert run_order(learner, EpochBegin, TrainingPhase) == ["ModelReader.start", "NarrowFreezer.freeze"]
    plan = cadence.graph.CallbackGraph([ModelReader()]).plan(BatchEnd, TrainingPhase, [None])
    assert plan.accesses[0].reads == (("model",),)
