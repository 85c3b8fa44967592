"""Fuzz the declarations: whatever a callback declares, building a learner either works (and the
learner trains) or fails with a CadenceError, TypeError or ValueError naming the callback."""

from __future__ import annotations

import contextlib
import io
import itertools
from typing import Any

import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from cadence import (
    READ,
    WRITE,
    CadenceError,
    Callback,
    Learner,
    NoConflict,
    RunFirst,
    Unresolvable,
    on,
)
from cadence.access import parse_state_access
from cadence.callbacks.checkpointer import Checkpointer
from cadence.errors import DeclarationError
from cadence.events import BatchBegin, BatchEnd, EpochEnd, Event, FitBegin, LossBegin
from cadence.phases import Phase, TrainingPhase, ValidationPhase

EXPECTED = (CadenceError, TypeError, ValueError)
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_names = itertools.count()

VALID_PATHS = [
    "model", "optimizer", "loss_fn", "data", "batch", "batch.x", "batch.y", "batch.y_pred",
    "batch.loss", "cbstate", "cbstate.history", "cbstate.metrics", "cbstate.shared", "cbstate.shared.deep",
]
keys = st.one_of(
    st.sampled_from(VALID_PATHS),
    st.sampled_from(["", ".", "batch.", ".loss", "batch..loss", "batch.loss.x", "model.weight", "learner",
                     "cbstate.1x", "batch.nope", "cbstate. x", "ünïcode.path"]),
    st.text(max_size=12),
    st.integers(),
    st.none(),
    st.tuples(st.text(max_size=3)),
    st.booleans(),
)
leaves = st.one_of(
    st.sampled_from([READ, WRITE]),
    st.none(),
    st.integers(),
    st.text(max_size=5),
    st.sampled_from(["READ", "WRITE", 1, 2, True, 1.5]),
)
declarations = st.recursive(leaves, lambda children: st.dictionaries(keys, children, max_size=3), max_leaves=8)
# Mostly well-formed declarations over a few paths, so that callbacks overlap, conflict and ask
# resolve_conflict; some malformed ones of every kind.
SHARED = ["model", "batch", "batch.loss", "cbstate.shared", "cbstate.shared.deep", "cbstate.other"]
well_formed = st.dictionaries(st.sampled_from(SHARED), st.sampled_from([READ, WRITE, WRITE]), min_size=1, max_size=3)
malformed = st.one_of(
    st.dictionaries(keys, declarations, max_size=4),
    st.dictionaries(st.sampled_from(VALID_PATHS), st.sampled_from([READ, WRITE]), max_size=4),
    st.sampled_from([None, [], "batch.loss", 3, ("batch.loss", READ), frozenset()]),
)


def mostly(common: st.SearchStrategy[Any], rare: st.SearchStrategy[Any], percent: int = 80) -> st.SearchStrategy[Any]:
    """``common`` ``percent`` per cent of the time (one_of would weigh them evenly)."""
    return st.integers(1, 100).flatmap(lambda n: common if n <= percent else rare)


state_access = mostly(well_formed, malformed)
EVENTS: list[type[Event]] = [Event, BatchBegin, LossBegin, BatchEnd, EpochEnd, FitBegin]
PHASES: list[type[Phase]] = [Phase, TrainingPhase, ValidationPhase]
handler = st.tuples(st.sampled_from(["h0", "h1", "h2"]), st.sampled_from(EVENTS), st.sampled_from(PHASES))
handlers = mostly(
    st.lists(st.tuples(st.just("h0"), st.sampled_from(EVENTS), st.sampled_from(PHASES)), min_size=1, max_size=2),
    st.lists(handler, max_size=4),  # several methods: sometimes ambiguous
)
RESOLUTIONS = ["notimplemented", "noconflict", "unresolvable", "self", "other", "stranger", "none", "text"]
run_after_choices = mostly(
    st.just(()),
    st.one_of(
        st.lists(st.sampled_from(["callback", "earlier", "int", "self"]), max_size=3).map(tuple),
        st.sampled_from([None, "Recorder", [Callback], (Callback(),), 3]),
    ),
    percent=70,
)


@st.composite
def callback_specs(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "state_access": draw(state_access),
        "handlers": draw(handlers),
        "resolution": draw(mostly(st.sampled_from(["noconflict", "self", "other", "notimplemented"]), st.sampled_from(RESOLUTIONS), 70)),
        "run_after": draw(run_after_choices),
        "instances": draw(st.integers(1, 2)),
    }


def make_class(name: str, spec: dict[str, Any], earlier: list[type[Callback]]) -> type[Callback]:
    namespace: dict[str, Any] = {"state_access": spec["state_access"]}
    for method, event, phase in spec["handlers"]:
        function = namespace.get(method) or (lambda self, event, phase, learner: None)
        namespace[method] = on(event, phase)(function)
    token = spec["resolution"]

    def resolve_conflict(self: Callback, other: Callback) -> Any:
        return {
            "notimplemented": NotImplemented, "noconflict": NoConflict(), "unresolvable": Unresolvable(),
            "self": RunFirst(self), "other": RunFirst(other), "stranger": RunFirst(Callback()),
            "none": None, "text": "first",
        }[token]

    namespace["resolve_conflict"] = resolve_conflict
    cls = type(name, (Callback,), namespace)
    run_after = spec["run_after"]
    if isinstance(run_after, tuple) and all(isinstance(r, str) for r in run_after):
        kinds = {"callback": Callback, "int": int, "self": cls}
        run_after = tuple(kinds.get(r) or (earlier[-1] if earlier else Callback) for r in run_after)
    cls.run_after = run_after
    return cls


def names_a_callback(message: str, names: list[str]) -> bool:
    """The message names one of the callbacks, or the entry of the callbacks argument at fault."""
    return any(name in message for name in names) or "callbacks[" in message or "callbacks must be" in message


@FUZZ
@given(
    specs=st.lists(callback_specs(), max_size=5),
    extras=mostly(st.just([]), st.lists(st.sampled_from(["int", "class", "none", "duplicate", "string"]), min_size=1, max_size=1)),
    default_callbacks=st.booleans(),
    shape=mostly(st.just("list"), st.sampled_from(["tuple", "generator", "single", "int", "string", "dict"])),
)
def test_any_declarations_build_or_fail_naming_the_callback(
    specs: list[dict[str, Any]], extras: list[str], default_callbacks: bool, shape: str
) -> None:
    classes: list[type[Callback]] = []
    names: list[str] = []
    try:
        for spec in specs:
            names.append(f"Fuzz{next(_names)}")
            classes.append(make_class(names[-1], spec, classes))
    except DeclarationError as error:  # ambiguous handlers, at class creation
        event("class creation: DeclarationError")
        assert names_a_callback(str(error), names), str(error)
        return
    callbacks: list[Any] = [cls() for cls, spec in zip(classes, specs) for _ in range(spec["instances"])]
    for extra in extras:
        callbacks.append({"int": 3, "class": Callback, "none": None, "string": "Recorder"}.get(extra, callbacks[0] if callbacks else 3))
    given_callbacks: Any = {
        "list": callbacks, "tuple": tuple(callbacks), "generator": (cb for cb in callbacks),
        "single": callbacks[0] if callbacks else Callback(), "int": 7, "string": "Recorder",
        "dict": {"cb": callbacks[0] if callbacks else None},
    }[shape]
    model = torch.nn.Linear(1, 1)
    batches = [(torch.ones(2, 1), torch.ones(2, 1))]
    try:
        learner = Learner(
            model, torch.nn.functional.mse_loss, torch.optim.SGD(model.parameters(), lr=0.1),
            data=(batches, batches), callbacks=given_callbacks, default_callbacks=default_callbacks,
        )
    except EXPECTED as error:
        event(f"build: {type(error).__name__}")
        assert names_a_callback(str(error), [c.__name__ for c in classes]), f"{type(error).__name__}: {error}"
        return
    event(f"built with {len(learner.callbacks)} callbacks")
    with contextlib.redirect_stdout(io.StringIO()):  # the default printers print
        assert learner.fit(1).stopped is None  # no-op handlers: a learner that builds must train


@FUZZ
@given(declaration=state_access, owner=st.sampled_from(["Printer", "Fuzzy#2"]))
def test_state_access_parses_or_names_the_owner(declaration: Any, owner: str) -> None:
    try:
        parsed = parse_state_access(owner, declaration)
    except DeclarationError as error:
        assert owner in str(error)
        return
    for path in parsed.all():
        assert all(isinstance(segment, str) and segment.isidentifier() for segment in path)


@FUZZ
@given(
    every_epochs=st.one_of(st.none(), st.integers(-2, 3), st.floats(allow_nan=True), st.booleans()),
    every_steps=st.one_of(st.none(), st.integers(-2, 3), st.text(max_size=2)),
    keep_last=st.one_of(st.integers(-1, 3), st.none()),
    keep_best=st.one_of(st.integers(-1, 3), st.floats()),
    monitor=st.one_of(st.text(max_size=8), st.none(), st.integers()),
    mode=st.one_of(st.sampled_from(["min", "max"]), st.text(max_size=4)),
    folder=st.one_of(st.sampled_from(["checkpoints", "a/b"]), st.integers(), st.none()),
)
def test_checkpointer_arguments_are_checked(**kwargs: Any) -> None:
    try:
        Checkpointer(**kwargs)
    except (TypeError, ValueError) as error:
        assert "Checkpointer" in str(error)
