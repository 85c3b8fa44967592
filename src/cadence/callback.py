"""Callbacks: handlers chosen by (event, phase), declared state access, and ordering hints."""

from __future__ import annotations

import inspect
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar

from cadence.access import AccessSet, merge_accesses, parse_state_access
from cadence.errors import DeclarationError
from cadence.events import Event
from cadence.lifecycle.loads import counting_loads
from cadence.phases import Phase
from cadence.introspection.signatures import check_handler, constructor_repr

__all__ = [
    "PLACEMENTS",
    "Callback",
    "Handler",
    "NoConflict",
    "Placement",
    "Resolution",
    "RunFirst",
    "Unresolvable",
    "access_at",
    "callback_labels",
    "declared_access",
    "handler_accesses",
    "handler_access_label",
    "handled_by",
    "on",
]

F = TypeVar("F", bound=Callable[..., Any])
_MARK = "__cadence_on__"

#: Where a callback runs in a distributed fit: on every process, or on the process of rank 0
#: only (printing, logging, writing files). In a single process both run.
Placement = Literal["every_rank", "rank_zero"]
PLACEMENTS: tuple[Placement, ...] = ("every_rank", "rank_zero")


@dataclass(frozen=True, slots=True)
class Handler:
    """One ``@on`` registration: the method ``name`` handles ``event`` in ``phase``.

    ``access`` is the registration's own declaration (``@on(..., access=...)``), used instead
    of the callback's ``state_access`` wherever this registration handles an event; None
    means the callback's ``state_access``.
    """

    event: type[Event]
    phase: type[Phase]
    name: str
    access: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)

    def covers(self, other: Handler) -> bool:
        """Whether every (event, phase) that ``other`` handles is also handled by ``self``."""
        return issubclass(other.event, self.event) and issubclass(other.phase, self.phase)

    def matches(self, event: type[Event], phase: type[Phase]) -> bool:
        return issubclass(event, self.event) and issubclass(phase, self.phase)


def on(
    event: type[Event], phase: type[Phase] = Phase, *, access: Mapping[str, Any] | None = None
) -> Callable[[F], F]:
    """Register a ``Callback`` method as the handler of ``event`` in ``phase`` (and subclasses).

    The method is called as ``method(event, phase, learner)``, where ``learner`` is a view that
    enforces the callback's ``state_access``, or ``access`` when given: a declaration of the
    same form (``{"batch.loss": WRITE}``) that applies to this handler alone, in place of
    ``state_access``, so that the graph orders and checks this event by what this handler
    touches. A method may carry several ``@on``; two of them that can match the same event and
    phase must declare the same ``access``.

    Example:
        >>> from cadence import Callback, on, READ
        >>> from cadence.events import BatchEnd
        >>> from cadence.phases import TrainingPhase
        >>> class LossLogger(Callback):
        ...     state_access = {"batch.loss": READ}
        ...     @on(BatchEnd, phase=TrainingPhase)
        ...     def log(self, event, phase, learner):
        ...         print(float(learner.batch.loss))
        >>> LossLogger.handlers
        (Handler(event=<class 'cadence.events.BatchEnd'>, phase=<class 'cadence.phases.TrainingPhase'>, name='log'),)
    """
    if not (isinstance(event, type) and issubclass(event, Event)):
        raise TypeError(f"@on expects an Event class such as BatchEnd; got {event!r}.")
    if not (isinstance(phase, type) and issubclass(phase, Phase)):
        raise TypeError(f"@on(..., phase=...) expects a Phase class such as TrainingPhase; got {phase!r}.")

    def mark(method: F) -> F:
        if access is not None and not isinstance(access, Mapping):
            raise TypeError(
                f"@on({event.__name__}, access=...) of {getattr(method, '__qualname__', method)} expects "
                f'a dict of paths to READ or WRITE, e.g. access={{"batch.loss": WRITE}}; got '
                f"{type(access).__name__}."
            )
        marks: list[tuple[type[Event], type[Phase], Mapping[str, Any] | None]] = getattr(method, _MARK, [])
        setattr(method, _MARK, [*marks, (event, phase, access)])
        return method

    return mark


@dataclass(frozen=True, slots=True)
class NoConflict:
    """Answer to ``resolve_conflict``: the two callbacks may run in either order."""


@dataclass(frozen=True, slots=True)
class Unresolvable:
    """Answer to ``resolve_conflict``: the two callbacks cannot be used together."""


@dataclass(frozen=True, slots=True, eq=False)
class RunFirst:
    """Answer to ``resolve_conflict``: ``callback`` (one of the pair) runs first."""

    callback: Callback

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunFirst) and other.callback is self.callback

    def __hash__(self) -> int:
        return id(self.callback)


Resolution = NoConflict | Unresolvable | RunFirst


class Callback:
    """Base class of callbacks.

    Extending:
        1. Subclass ``Callback``.
        2. Write handlers: methods ``(self, event, phase, learner)`` decorated with
           ``@on(Event, phase=Phase)``. When several of a callback's handlers match one
           (event, phase), the most specific runs; two equally specific ones are an error.
        3. Declare the state the handlers (and ``init``) touch in ``state_access``, e.g.
           ``{"batch.loss": READ, "cbstate.history": READ}``. Undeclared access raises
           ``ProtectedAccessError``. A handler that touches less (or other state) than the rest
           declares its own: ``@on(BackwardBegin, access={"batch.loss": WRITE})``.
        4. Optionally: ``run_after`` (callback types this one runs after), ``resolve_conflict``
           (how to order against another writer of the same state), and ``init`` (create the
           ``cbstate`` entries this callback writes).
        5. A callback with state: ``state_dict``/``load_state_dict`` (checkpoints) and ``reset``
           (what a new ``fit`` starts from). One that holds something across events (a
           context entered at ``BatchBegin``) lets go of it in ``teardown``.
        6. For distributed training (``cadence.distributed``): ``placement = "rank_zero"`` for a
           callback that only prints, logs or writes files, so that it runs (``init`` and
           handlers) on the process of rank 0 alone. Such a callback must not run collectives
           and may write only ``cbstate`` entries that no every-rank callback reads.
    """

    state_access: Mapping[str, Any] = {}
    run_after: tuple[type[Any], ...] = ()
    handlers: ClassVar[tuple[Handler, ...]] = ()
    #: True for callbacks whose handlers must run on the thread that runs the training step
    #: (they change per-thread state such as autocast); ``ThreadedExecutor`` never moves them.
    thread_affine: ClassVar[bool] = False
    #: When ``fit`` calls ``reset()``: ``"fit"``, before every fit but the callback's first;
    #: ``"learner"``, only before its first fit in another learner than its last, for counts
    #: that are the learner's step axis (``Recorder``, ``Metrics``, the printers), which a second
    #: fit of the same learner continues.
    reset_when: ClassVar[Literal["fit", "learner"]] = "fit"
    #: True for callbacks that write files (checkpoints, logs): ``fit(fast_dev_run=True)`` runs
    #: without them, so that a quick check of the code writes nothing.
    writes_files: ClassVar[bool] = False
    #: For built-ins: how a fix hint writes this callback where it is missing, such as
    #: ``"Scheduler(lr=cosine(0.1, 0.001))"``. None: ``"Name()"``, or ``"a Name callback"`` when
    #: the constructor has required arguments.
    producer_example: ClassVar[str | None] = None
    #: ``"every_rank"`` (the default) or ``"rank_zero"``: see ``Extending`` step 6.
    placement: ClassVar[Placement] = "every_rank"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.handlers = _collect_handlers(cls)
        if inspect.isfunction(vars(cls).get("load_state_dict")):  # counted: a new fit keeps state loaded before it
            cls.load_state_dict = counting_loads(vars(cls)["load_state_dict"])  # type: ignore[method-assign]
        if cls.__module__.startswith("cadence."):
            _register_producer(cls)

    def init(self, learner: Any) -> None:
        """Called once when the callback joins a learner, with the same protected view as the
        handlers. Create the ``cbstate`` entries this callback writes here."""

    def resolve_conflict(self, other: Callback) -> Resolution | Any:
        """Say how to order this callback against ``other`` when both write overlapping state at
        an event and phase where nothing else orders them. Return ``NoConflict()``,
        ``RunFirst(callback)``, ``Unresolvable()``, or ``NotImplemented`` (the default) to leave
        the answer to ``other``."""
        return NotImplemented

    def state_dict(self) -> dict[str, Any]:
        """The callback's own state, for checkpoints: a dict of tensors, numbers, strings,
        lists and dicts only (it is saved without pickling arbitrary objects). Stateless
        callbacks return ``{}`` (the default)."""
        return {}

    def reset(self) -> None:
        """Forget what an earlier fit left, so that a new fit starts afresh.

        ``fit`` calls it before ``FitBegin`` of every fit but the callback's first (in this
        learner or another; with ``reset_when = "learner"``, only of a fit in another learner),
        or when the callback joins a learner during a fit, unless its state was loaded
        (``load_state_dict``) since its last fit; a resumed fit then restores the checkpoint's
        state over it. The default does nothing. A callback that keeps state (it implements
        ``state_dict``) but not ``reset`` is logged with a warning, once, when it starts a second
        fit: implement ``reset`` to set that state back as ``__init__`` leaves it (with
        ``reset_when = "learner"`` for counts that go on across the fits of one learner), or, to
        keep it across fits on purpose, with a body that keeps it (``pass`` and a comment saying
        why).
        """

    def teardown(self) -> None:
        """Called when every entry point that runs events ends, normally or by an error:
        ``fit`` (after ``FitEnd``), ``epoch``, ``step``, and so ``validate``, ``predict``,
        ``get_preds`` and ``lr_find`` (Lightning's ``teardown``). Undo here what a handler set
        up and a later event would have undone had the run not stopped early, such as a
        context entered at ``BatchBegin`` (``MixedPrecision`` leaves autocast); it must be
        safe to call when nothing is held. It takes no learner: it touches only the
        callback's own state. The default does nothing."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned. The default accepts only ``{}``."""
        if state:
            raise ValueError(
                f"{type(self).__name__} keeps no state but was given {sorted(state)}; implement "
                f"load_state_dict to restore it."
            )

    def handler_for(self, event: type[Event], phase: type[Phase]) -> str | None:
        """Return the name of the method handling (event, phase), or None.

        Raises:
            DeclarationError: when two handlers match and neither is more specific.
        """
        return _pick(type(self), event, phase)

    def __repr__(self) -> str:
        """``Name(arg, key=value)``: the constructor arguments that differ from their defaults,
        read from the same-named attributes (``self.patience`` or ``self._patience``)."""
        return constructor_repr(self)


# cbstate entry -> the built-in callback that writes it, for MissingStateError's suggestion.
PRODUCERS: dict[str, str] = {}


def _register_producer(cls: type[Callback]) -> None:
    for path in declared_access(cls).writes:
        if path[0] == "cbstate" and len(path) > 1:
            PRODUCERS.setdefault(path[1], _producer_example(cls))


def handler_access_label(owner: str, handler: Handler) -> str:
    """How messages name a handler's own declaration: ``"Printer.show's @on(BatchEnd, access=...)"``."""
    return f"{owner}.{handler.name}'s @on({handler.event.__name__}, access=...)"


def access_at(callback: Callback, event: type[Event], phase: type[Phase]) -> AccessSet | None:
    """What ``callback`` declares for its handler of (event, phase): the handler's own
    ``access=``, else the callback's ``state_access``; None when it does not handle it. For
    ``resolve_conflict`` implementations that depend on what the other callback does where
    (``MixedPrecision``'s does).

    Example:
        >>> from cadence import WRITE
        >>> from cadence.events import BackwardBegin, BatchEnd
        >>> class Penalty(Callback):
        ...     @on(BackwardBegin, access={"batch.loss": WRITE})
        ...     def add(self, event, phase, learner): ...
        >>> access_at(Penalty(), BackwardBegin, Phase), access_at(Penalty(), BatchEnd, Phase)
        (AccessSet(writes=(('batch', 'loss'),), reads=()), None)
    """
    handled = handled_by(callback, event, phase)
    if handled is None:
        return None
    name, own = type(callback).__name__, handled[1]
    if own is not None:
        return parse_state_access(name, own.access, where=handler_access_label(name, own))
    return parse_state_access(name, callback.state_access)


def declared_access(callback: Callback | type[Callback], owner: str | None = None) -> AccessSet:
    """Everything ``callback`` declares, over all its handlers: its ``state_access`` and each
    ``@on(..., access=...)`` (``owner`` names it in errors; the class name by default).

    Example:
        >>> from cadence import READ, WRITE
        >>> from cadence.events import BackwardBegin
        >>> class Penalty(Callback):
        ...     state_access = {"model": READ}
        ...     @on(BackwardBegin, access={"batch.loss": WRITE})
        ...     def add(self, event, phase, learner): ...
        >>> declared_access(Penalty)
        AccessSet(writes=(('batch', 'loss'),), reads=(('model',),))
    """
    name = owner or (callback.__name__ if isinstance(callback, type) else type(callback).__name__)
    return merge_accesses([parse_state_access(name, callback.state_access), *handler_accesses(callback, name).values()])


def handler_accesses(callback: Callback | type[Callback], owner: str) -> dict[Handler, AccessSet]:
    """The registrations of ``callback`` that declare their own access, each parsed."""
    return {
        h: parse_state_access(owner, h.access, where=handler_access_label(owner, h))
        for h in callback.handlers
        if h.access is not None
    }


def handled_by(callback: Callback, event: type[Event], phase: type[Phase]) -> tuple[str, Handler | None] | None:
    """The method that handles (event, phase), as ``callback.handler_for`` says (a subclass may
    override it), and its registration when that declares its own ``access=`` (None: the
    callback's ``state_access`` applies there); None when the callback does not handle it.
    What the graph and ``access_at`` read a handler's declaration from.

    The registration is that of the method ``handler_for`` names (the one that matches (event,
    phase), or else its first); a name no registration has (the gate ``throttle`` puts in front
    of a handler) stands for the most specific registration that matches."""
    method = callback.handler_for(event, phase)
    if method is None:
        return None
    named = [h for h in callback.handlers if h.name == method]
    if named:
        chosen: Handler | None = next((h for h in named if h.matches(event, phase)), named[0])
    else:
        chosen = _best(type(callback).__name__, callback.handlers, event, phase)
    return method, chosen if chosen is not None and chosen.access is not None else None


def _producer_example(cls: type[Callback]) -> str:
    if cls.producer_example is not None:
        return cls.producer_example
    parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]  # after self
    required = [p for p in parameters if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return f"a {cls.__name__} callback" if required else f"{cls.__name__}()"


def _collect_handlers(cls: type[Callback]) -> tuple[Handler, ...]:
    # A subclass that overrides a handler without repeating @on keeps the base's registration.
    marks: dict[str, list[tuple[type[Event], type[Phase], Mapping[str, Any] | None]]] = {}
    for klass in reversed(cls.__mro__):
        for name, attr in vars(klass).items():
            own = getattr(attr, _MARK, None)
            if own is not None:
                marks[name] = list(own)
    found: list[Handler] = []
    for name, registrations in marks.items():
        check_handler(cls, name, [f"@on({e.__name__}, phase={p.__name__})" for e, p, _ in registrations])
        for event, phase, access in registrations:
            found.append(Handler(event, phase, name, access))
    for i, a in enumerate(found):
        for b in found[i + 1 :]:
            _check_pair(cls, a, b, found)
    return tuple(found)


def _check_pair(cls: type[Callback], a: Handler, b: Handler, found: list[Handler]) -> None:
    events_meet = issubclass(a.event, b.event) or issubclass(b.event, a.event)
    phases_meet = issubclass(a.phase, b.phase) or issubclass(b.phase, a.phase)
    if a.name == b.name and events_meet and phases_meet and _flat(a.access) != _flat(b.access):
        raise DeclarationError(
            f"{cls.__name__}.{a.name} has @on({a.event.__name__}, phase={a.phase.__name__}) and "
            f"@on({b.event.__name__}, phase={b.phase.__name__}) with different access, and both can "
            f"handle the same event; give both the same access=, or split the method in two."
        )
    if a.covers(b) or b.covers(a):
        if (a.event, a.phase) == (b.event, b.phase) and a.name != b.name:
            raise DeclarationError(
                f"{cls.__name__} handles {a.event.__name__} in {a.phase.__name__} twice, with "
                f"{a.name} and {b.name}; keep one handler per (event, phase)."
            )
        return
    if events_meet and phases_meet:
        # Where both apply, another handler (or the same method) may settle it; _pick says.
        event = a.event if issubclass(a.event, b.event) else b.event
        phase = a.phase if issubclass(a.phase, b.phase) else b.phase
        _pick_from(cls.__name__, found, event, phase)


def _flat(access: Mapping[str, Any] | None) -> dict[tuple[str, ...], Any] | None:
    """``access`` with nested dicts spelt out as dotted paths, to compare two declarations
    (``{"batch": {"loss": READ}}`` is ``{"batch.loss": READ}``); checked later, at build."""
    if access is None:
        return None
    flat: dict[tuple[str, ...], Any] = {}
    for key, value in access.items():
        path = tuple(str(key).split("."))
        if isinstance(value, Mapping):
            flat.update({path + rest: inner for rest, inner in (_flat(value) or {}).items()})
        else:
            flat[path] = value
    return flat


def _ambiguity(owner: str, event: type[Event], phase: type[Phase], a: Handler, b: Handler) -> str:
    return (
        f"{owner} has two handlers for {event.__name__} in {phase.__name__} and neither is more "
        f"specific: {a.name} (@on({a.event.__name__}, phase={a.phase.__name__})) and {b.name} "
        f"(@on({b.event.__name__}, phase={b.phase.__name__})). Add a handler with "
        f"@on({event.__name__}, phase={phase.__name__}) that decides."
    )


def _pick(cls: type[Callback], event: type[Event], phase: type[Phase]) -> str | None:
    return _pick_from(cls.__name__, cls.handlers, event, phase)


def _pick_from(
    owner: str, handlers: Sequence[Handler], event: type[Event], phase: type[Phase]
) -> str | None:
    best = _best(owner, handlers, event, phase)
    return None if best is None else best.name


def _best(owner: str, handlers: Sequence[Handler], event: type[Event], phase: type[Phase]) -> Handler | None:
    matching = [h for h in handlers if h.matches(event, phase)]
    if not matching:
        return None
    # The most specific handlers: those no other matching handler is strictly narrower than.
    best = [h for h in matching if not any(h.covers(g) and not g.covers(h) for g in matching)]
    if len({h.name for h in best}) == 1:
        return best[0]
    a, b = best[:2]
    raise DeclarationError(_ambiguity(owner, event, phase, a, b))


def callback_labels(callbacks: Iterable[Callback]) -> list[str]:
    """Labels as errors and ``explain()`` show them: the class name, numbered when repeated
    (``["Recorder", "Printer#1", "Printer#2"]``). Checkpoints match callback states by label."""
    names = [type(cb).__name__ for cb in callbacks]
    counts, seen = Counter(names), Counter[str]()
    labels = []
    for name in names:
        seen[name] += 1
        labels.append(name if counts[name] == 1 else f"{name}#{seen[name]}")
    return labels
