"""Declared state access: parsing, overlap, and the protected view handlers receive."""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch
from helpers import Probe

from cadence import READ, WRITE, Callback, DeclarationError, Learner, ProtectedAccessError, on
from cadence.access import AccessSet, overlaps, parse_state_access
from cadence.events import BackwardEnd, BatchBegin, BatchEnd, EpochBegin, EpochEnd, Event, LossBegin
from cadence.phases import Phase, TrainingPhase
from cadence.testing import make_test_learner

# ---- parsing -------------------------------------------------------------------------------


def test_dotted_and_nested_declarations_are_equivalent() -> None:
    dotted = parse_state_access("P", {"batch.loss": READ, "batch.y": WRITE, "cbstate.history": READ})
    nested = parse_state_access("P", {"batch": {"loss": READ, "y": WRITE}, "cbstate": {"history": READ}})
    assert dotted == nested == AccessSet(writes=(("batch", "y"),), reads=(("batch", "loss"), ("cbstate", "history")))


def test_mixed_nesting_and_deeper_cbstate_paths() -> None:
    access = parse_state_access("P", {"cbstate": {"history.train": WRITE}, "model": READ})
    assert access == AccessSet(writes=(("cbstate", "history", "train"),), reads=(("model",),))


def test_write_wins_when_a_path_is_declared_twice() -> None:
    access = parse_state_access("P", {"batch.loss": READ, "batch": {"loss": WRITE}})
    assert access == AccessSet(writes=(("batch", "loss"),), reads=())


def test_empty_declaration_means_no_access() -> None:
    assert parse_state_access("P", {}) == AccessSet()


def test_overlap_is_prefix() -> None:
    assert overlaps(("batch",), ("batch", "loss"))
    assert overlaps(("batch", "loss"), ("batch",))
    assert overlaps(("cbstate", "history"), ("cbstate", "history", "train"))
    assert not overlaps(("batch", "x"), ("batch", "y"))
    assert not overlaps(("model",), ("batch",))


@pytest.mark.parametrize(
    ("declaration", "message"),
    [
        ({"history": READ}, r"P\.state_access declares 'history', which is not learner state\. Valid paths start with model, optimizer, loss_fn, data, adapter, batch, cbstate; shared state goes under cbstate, e\.g\. \"cbstate\.history\""),
        ({"batch.logits": READ}, r"P\.state_access declares 'batch\.logits', which is not a batch field\. Batch fields are .*loss.*y_pred"),
        ({"batch.loss.value": READ}, r"P\.state_access declares 'batch\.loss\.value', which is not a batch field"),
        ({"model.layer": READ}, r"P\.state_access declares 'model\.layer', but model is handed out whole; declare \{\"model\": READ\} or \{\"model\": WRITE\}"),
        ({"optimizer": {"lr": WRITE}}, r"P\.state_access declares 'optimizer\.lr', but optimizer is handed out whole"),
        ({"batch.loss": "read"}, r"P\.state_access declares 'read' for 'batch\.loss'; use READ or WRITE \(from cadence import READ, WRITE\), e\.g\. \{\"batch\.loss\": READ\}"),
        ({"batch.loss": True}, r"P\.state_access declares True for 'batch\.loss'; use READ or WRITE"),
        ({"batch.loss": 1}, r"P\.state_access declares 1 for 'batch\.loss'; use READ or WRITE"),
        ({"batch": {}}, r"P\.state_access has an empty dict under 'batch'\. Declare at least one path, e\.g\. \{\"batch\.loss\": READ\}, or leave the entry out"),
        ({"cbstate": {"history": {}}}, r"P\.state_access has an empty dict under 'cbstate\.history'"),
        ({1: READ}, r"P\.state_access has the key 1; keys are dotted paths such as \"batch\.loss\" or \"cbstate\.history\""),
        ({"": READ}, r"P\.state_access has the key ''; keys are dotted paths"),
        ({"batch..loss": READ}, r"P\.state_access has the malformed path 'batch\.\.loss'; a path is dot-separated names not starting with \"_\", such as \"batch\.loss\""),
        ({"cbstate._private": READ}, r"P\.state_access has the malformed path 'cbstate\._private'; a path is dot-separated names not starting with \"_\""),
        ({"cbstate.__class__": READ}, r"P\.state_access has the malformed path 'cbstate\.__class__'"),
    ],
)
def test_malformed_declarations_name_the_callback_and_path(declaration: Any, message: str) -> None:
    with pytest.raises(DeclarationError, match=message):
        parse_state_access("P", declaration)


@pytest.mark.parametrize("declaration", [["batch.loss"], "batch.loss", None, READ])
def test_a_declaration_must_be_a_dict(declaration: Any) -> None:
    shown = type(declaration).__name__
    with pytest.raises(DeclarationError, match=rf"P\.state_access must be a dict of paths to READ or WRITE, e\.g\. \{{\"batch\.loss\": READ\}}; got {shown}\."):
        parse_state_access("P", declaration)


@pytest.mark.parametrize(
    ("declaration", "message"),
    [
        ({"model.layer": READ}, r"Printer\.state_access declares 'model\.layer', but model is handed out whole"),
        ({"history": READ}, r"Printer\.state_access declares 'history', which is not learner state"),
        ({"batch.logits": READ}, r"Printer\.state_access declares 'batch\.logits', which is not a batch field"),
        ({"batch.loss": "READ"}, r"Printer\.state_access declares 'READ' for 'batch\.loss'; use READ or WRITE"),
        ({"batch": {}}, r"Printer\.state_access has an empty dict under 'batch'"),
        ({2: READ}, r"Printer\.state_access has the key 2; keys are dotted paths"),
        (["batch.loss"], r"Printer\.state_access must be a dict of paths to READ or WRITE"),
    ],
)
def test_learner_raises_declaration_errors_naming_the_callback(declaration: Any, message: str) -> None:
    class Printer(Callback):
        state_access = declaration

    with pytest.raises(DeclarationError, match=message):
        make_test_learner(Printer())
    learner = make_test_learner()
    with pytest.raises(DeclarationError, match=message):
        learner.add_callback(Printer())
    assert learner.callbacks == ()


def test_declaration_errors_are_value_errors() -> None:
    with pytest.raises(ValueError, match="not learner state"):
        parse_state_access("P", {"nope": READ})


# ---- views ---------------------------------------------------------------------------------


def view_of(state_access: dict[str, Any]) -> Any:
    """The protected view a callback with ``state_access`` receives, after one training step
    (``fit`` clears the batch when it ends)."""
    probe = Probe(state_access)
    learner = make_test_learner(probe, n_batches=1)
    learner.step(TrainingPhase(), learner.data[0][0])  # type: ignore[index]
    return probe.view


def test_read_error_names_the_path_and_the_fix() -> None:
    class Printer(Callback):
        @on(BatchEnd)
        def print_loss(self, event: Event, phase: Phase, learner: Any) -> None:
            learner.batch.loss

    expected = 'Read access to Learner.batch.loss disallowed.\nDeclare it in Printer.state_access, e.g. {"batch.loss": READ}.'
    with pytest.raises(ProtectedAccessError, match=f"^{re.escape(expected)}") as info:
        make_test_learner(Printer()).fit(1)
    assert str(info.value) == expected


def test_write_error_for_a_read_only_path_says_to_declare_write() -> None:
    view = view_of({"batch.loss": READ})
    expected = (
        "Write access to Learner.batch.loss disallowed.\nProbe declares it READ; declare WRITE instead. "
        'Declare it in Probe.state_access, e.g. {"batch.loss": WRITE}.'
    )
    with pytest.raises(ProtectedAccessError, match=f"^{re.escape(expected)}$"):
        view.batch.loss = torch.zeros(())


def test_write_error_for_an_undeclared_path() -> None:
    view = view_of({})
    with pytest.raises(ProtectedAccessError, match=r'^Write access to Learner\.cbstate\.notes disallowed\.\nDeclare it in Probe\.state_access, e\.g\. \{"cbstate\.notes": WRITE\}\.$'):
        view.cbstate.notes = []
    with pytest.raises(ProtectedAccessError, match=r"Write access to Learner\.batch\.y disallowed"):
        del view.batch.y


def test_default_is_no_access() -> None:
    view = view_of({})
    for field in ("x", "y", "y_pred", "loss"):
        with pytest.raises(ProtectedAccessError, match=rf"Read access to Learner\.batch\.{field} disallowed"):
            getattr(view.batch, field)
    for root in ("model", "optimizer", "loss_fn", "data", "adapter"):
        with pytest.raises(ProtectedAccessError, match=rf'Read access to Learner\.{root} disallowed\.\nDeclare it in Probe\.state_access, e\.g\. \{{"{root}": READ\}}'):
            getattr(view, root)
    with pytest.raises(ProtectedAccessError, match=r"Read access to Learner\.cbstate\.history disallowed"):
        view.cbstate.history


def test_write_implies_read() -> None:
    view = view_of({"batch.loss": WRITE, "model": WRITE, "cbstate.notes": WRITE})
    assert view.batch.loss is not None
    assert isinstance(view.model, torch.nn.Linear)
    view.cbstate.notes = ["hello"]
    assert view.cbstate.notes == ["hello"]


def test_whole_batch_covers_every_field() -> None:
    reader = view_of({"batch": READ})
    assert reader.batch.x is not None and reader.batch.y_pred is not None
    with pytest.raises(ProtectedAccessError, match="Write access to Learner.batch.x disallowed"):
        reader.batch.x = None
    writer = view_of({"batch": WRITE})
    writer.batch.y = None
    assert writer.batch.y is None


def test_objects_are_handed_out_themselves() -> None:
    probe = Probe({"model": READ, "optimizer": READ, "loss_fn": READ, "data": READ, "adapter": READ})
    learner = make_test_learner(probe)
    view = probe.view
    assert view.model is learner.model
    assert view.optimizer is learner.optimizer
    assert view.loss_fn is learner.loss_fn
    assert view.data is learner.data
    assert view.adapter is learner.adapter


def test_a_read_of_a_mutable_object_is_not_enforced_deeply() -> None:
    # Documented: READ hands out the object itself, so it can be mutated.
    probe = Probe({"model": READ})
    learner = make_test_learner(probe)
    with torch.no_grad():
        probe.view.model.weight.fill_(7.0)
    assert learner.model.weight.item() == 7.0


def test_object_roots_need_write_to_be_replaced() -> None:
    probe = Probe({"loss_fn": READ})
    learner = make_test_learner(probe)
    with pytest.raises(ProtectedAccessError, match=r"Write access to Learner\.loss_fn disallowed\.\nProbe declares it READ; declare WRITE instead\. Declare it in Probe\.state_access, e\.g\. \{\"loss_fn\": WRITE\}"):
        probe.view.loss_fn = torch.nn.functional.l1_loss
    writer = Probe({"loss_fn": WRITE})
    learner = make_test_learner(writer)
    writer.view.loss_fn = torch.nn.functional.l1_loss
    assert learner.loss_fn is torch.nn.functional.l1_loss


def test_protected_access_error_is_not_swallowed_by_hasattr() -> None:
    view = view_of({})
    with pytest.raises(ProtectedAccessError, match="Read access to Learner.batch.loss disallowed"):
        hasattr(view.batch, "loss")
    with pytest.raises(ProtectedAccessError, match="Read access to Learner.model disallowed"):
        getattr(view, "model", None)


@pytest.mark.parametrize("root", ["batch", "cbstate"])
def test_batch_and_cbstate_cannot_be_replaced(root: str) -> None:
    view = view_of({root: WRITE})
    expected = (
        f"Learner.{root} cannot be replaced; assign its entries instead, e.g. learner.{root}.<name> = value "
        f'with {{"{root}.<name>": WRITE}} declared in Probe.state_access.'
    )
    with pytest.raises(ProtectedAccessError, match=f"^{re.escape(expected)}$"):
        setattr(view, root, None)


def test_view_does_not_expose_learner_methods() -> None:
    view = view_of({"model": WRITE, "batch": WRITE, "cbstate": WRITE})
    for name in ("fit", "epoch", "add_callback", "explain", "callbacks", "executor"):
        with pytest.raises(ProtectedAccessError, match=rf"Learner\.{name} is not state a callback can access\.\nHandlers see model, optimizer, loss_fn, data, adapter, batch, cbstate; share your own state through cbstate"):
            getattr(view, name)


def test_view_refuses_new_attributes() -> None:
    view = view_of({})
    with pytest.raises(ProtectedAccessError, match=r"Write access to Learner\.total disallowed\.\nLearner\.total is not learner state; share state through cbstate, e\.g\. \{\"cbstate\.total\": WRITE\}"):
        view.total = 1


def test_declared_but_missing_cbstate_entry_is_an_attribute_error() -> None:
    # The probe is the producer, and it has not created the entry.
    view = view_of({"cbstate.notes": WRITE})
    with pytest.raises(AttributeError, match=r"cbstate has no entry 'notes' yet\. The callback that writes cbstate\.notes creates it, usually in its init\(\)"):
        view.cbstate.notes
    assert not hasattr(view.cbstate, "notes")
    assert "notes" not in view.cbstate


def test_membership_checks_access_too() -> None:
    view = view_of({})
    with pytest.raises(ProtectedAccessError, match=r"Read access to Learner\.cbstate\.history disallowed"):
        "history" in view.cbstate


def test_deeper_cbstate_paths_grant_the_entry() -> None:
    view = view_of({"cbstate.log.train": WRITE})
    view.cbstate.log = {"train": 1}
    assert view.cbstate.log == {"train": 1}


def test_whole_cbstate_read_sees_every_entry() -> None:
    writer = Probe({"cbstate.notes": WRITE})
    reader = Probe({"cbstate": READ})
    make_test_learner(writer, reader)
    writer.view.cbstate.notes = "n"
    assert reader.view.cbstate.notes == "n"


def test_init_runs_behind_the_same_view_as_the_handlers() -> None:
    views: list[Any] = []

    class Sneaky(Callback):
        def init(self, learner: Any) -> None:
            views.append(learner)

        @on(Event)
        def record(self, event: Event, phase: Phase, learner: Any) -> None:
            views.append(learner)

    make_test_learner(Sneaky(), n_batches=2).fit(2)
    assert len(views) > 10
    assert all(view is views[0] for view in views)


def test_init_access_is_enforced() -> None:
    class Greedy(Callback):
        def init(self, learner: Any) -> None:
            learner.cbstate.notes = []

    with pytest.raises(ProtectedAccessError, match=r"Write access to Learner\.cbstate\.notes disallowed") as info:
        make_test_learner(Greedy())
    assert "Raised by Greedy.init; the learner's callbacks are unchanged." in info.value.__notes__


def test_views_are_built_once_per_callback_not_per_event() -> None:
    seen: dict[type[Event], set[int]] = {}

    class Watcher(Callback):
        @on(Event)
        def watch(self, event: Event, phase: Phase, learner: Any) -> None:
            seen.setdefault(type(event), set()).add(id(learner))

    make_test_learner(Watcher(), n_batches=3).fit(2)
    assert {BatchBegin, LossBegin, BackwardEnd, BatchEnd, EpochBegin, EpochEnd} <= set(seen)
    assert len(set().union(*seen.values())) == 1


def test_each_callback_gets_its_own_view() -> None:
    a, b = Probe({"batch.x": READ}), Probe({"batch.y": READ})
    make_test_learner(a, b)
    assert a.view is not b.view
    with pytest.raises(ProtectedAccessError, match=r"Declare it in Probe#2\.state_access"):
        b.view.batch.x


def test_reads_see_the_current_batch() -> None:
    seen: list[torch.Tensor] = []

    class Reader(Callback):
        state_access = {"batch.x": READ}

        @on(BatchBegin, phase=TrainingPhase)
        def read(self, event: Event, phase: Phase, learner: Any) -> None:
            seen.append(learner.batch.x)

    learner = make_test_learner(Reader(), n_batches=3)
    learner.fit(1, data=(learner.data[0], None))  # type: ignore[index]
    assert all(s is x for s, (x, _) in zip(seen, learner.data[0], strict=True))  # type: ignore[index]


def test_learner_itself_is_not_protected() -> None:
    learner = Learner(torch.nn.Linear(1, 1), torch.nn.functional.mse_loss)
    assert learner.batch.loss is None


# ---- per-handler access -------------------------------------------------------------------------


class Narrow(Callback):
    """``state_access`` for init and the undeclared handler; one handler declares its own."""

    state_access = {"batch.loss": READ, "cbstate.seen": WRITE}

    def init(self, learner: Any) -> None:
        learner.cbstate.seen = []

    @on(BatchEnd, phase=TrainingPhase, access={"batch.y": READ})
    def targets(self, event: Event, phase: Phase, learner: Any) -> None:
        learner.batch.y
        learner.batch.loss  # not declared by this handler

    @on(EpochEnd, phase=TrainingPhase)
    def epoch(self, event: Event, phase: Phase, learner: Any) -> None:
        learner.cbstate.seen.append(float(learner.batch.loss))


def test_a_handler_sees_only_its_own_declaration_and_the_hint_names_it() -> None:
    learner = make_test_learner(Narrow(), n_batches=2)
    expected = (
        "Read access to Learner.batch.loss disallowed.\n"
        "Declare it in Narrow.targets's @on(BatchEnd, access=...), e.g. {\"batch.loss\": READ}."
    )
    with pytest.raises(ProtectedAccessError, match=f"^{re.escape(expected)}"):
        learner.fit(1)


def test_a_write_refused_by_a_handlers_read_names_the_handlers_declaration() -> None:
    class Reader(Callback):
        state_access = {"batch.loss": WRITE}  # the callback writes it elsewhere; this handler only reads

        @on(BatchEnd, phase=TrainingPhase, access={"batch.loss": READ})
        def show(self, event: Event, phase: Phase, learner: Any) -> None:
            learner.batch.loss = learner.batch.loss * 2

    expected = (
        "Write access to Learner.batch.loss disallowed.\n"
        "Reader.show's @on(BatchEnd, access=...) declares it READ; declare WRITE instead. "
        'Declare it in Reader.show\'s @on(BatchEnd, access=...), e.g. {"batch.loss": WRITE}.'
    )
    with pytest.raises(ProtectedAccessError, match=f"^{re.escape(expected)}"):
        make_test_learner(Reader(), n_batches=1).fit(1)


def test_undeclared_handlers_and_init_keep_the_callbacks_state_access() -> None:
    class Wide(Narrow):
        @on(BatchEnd, phase=TrainingPhase, access={"batch.y": READ, "batch.loss": READ})
        def targets(self, event: Event, phase: Phase, learner: Any) -> None:
            super().targets(event, phase, learner)

    learner = make_test_learner(Wide(), n_batches=2)
    learner.fit(2)
    assert len(learner.cbstate.seen) == 2


def test_a_bad_path_in_a_handlers_access_names_the_handler() -> None:
    class Typo(Callback):
        @on(BatchEnd, access={"batch.los": READ})
        def show(self, event: Event, phase: Phase, learner: Any) -> None: ...

    with pytest.raises(DeclarationError, match=r"^Typo\.show's @on\(BatchEnd, access=\.\.\.\) declares 'batch\.los', which is not a batch field"):
        make_test_learner(Typo())


class ViewIds:
    """An executor that runs plans serially and records every view it hands to each handler."""

    def __init__(self) -> None:
        self.views: dict[tuple[str, str], set[int]] = {}

    def run(self, plan: Any, event: Event, phase: Phase) -> None:
        for label, (handler, view) in zip(plan.labels, plan.calls):
            self.views.setdefault((label, type(event).__name__), set()).add(id(view))
            handler(event, phase, view)


def test_per_handler_views_are_built_once_not_per_event() -> None:
    from cadence.callbacks.precision import MixedPrecision

    executor = ViewIds()
    learner = make_test_learner(MixedPrecision(torch.bfloat16), executor=executor, n_batches=3)
    learner.fit(2)
    learner.fit(1)
    # One view per registration, the same in every phase and every fit: leave() has three
    # registrations (BatchEnd, EpochEnd, FitEnd), the other handlers one each.
    assert all(len(ids) == 1 for ids in executor.views.values()), executor.views
    assert len(set().union(*executor.views.values())) == 7
