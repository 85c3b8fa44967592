"""A learner's callbacks as installed: the graph built from them, the views of the learner each
handler sees, and one plan per (event, phase), kept consistent through every change.

``Learner`` holds one ``InstalledCallbacks`` and delegates to it: ``add_callback``,
``remove_callback``, ``replace_callback``, ``get_callback``, ``plans`` and ``explain``. A
change is validated and planned in full before it is committed, so a failed one leaves the
learner as it was. ``plans`` is one dict for the learner's lifetime, updated in place, so that
``Learner.fire`` stays one dict lookup and an executor call.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cadence.access import LearnerView
from cadence.callback import Callback, Handler, handler_access_label
from cadence.errors import CadenceError
from cadence.events import Event, FitEnd
from cadence.graph.builder import CallbackGraph, Plan
from cadence.phases import Phase, TrainingPhase, ValidationPhase

__all__ = ["InstalledCallbacks", "PhasePlans", "check_callbacks", "missing_defaults"]

PhasePlans = dict[type[Event], Plan | None]
HandlerViews = Sequence[Mapping[Handler, LearnerView]]
Views = tuple[list[LearnerView], list[dict[Handler, LearnerView]]]


@dataclass(frozen=True)
class _Saved:
    """What ``InstalledCallbacks.saved`` puts back."""

    callbacks: tuple[Callback, ...]
    graph: CallbackGraph
    views: Views
    plans: dict[type[Phase], PhasePlans]
    phases: tuple[type[Phase], ...]
    batch: object


class InstalledCallbacks:
    """The callbacks of ``learner``, their graph, views and plans.

    Args:
        learner: What the views give access to (its ``batch`` and ``cbstate`` are read when
            the views are built).
        check: Called with every list of callbacks before it is built (a fit in progress
            refuses some changes); raises to refuse it.
        localize: Each plan as this process runs it (a distributed strategy's), or None.
        runs_here: Whether a callback runs in this process (its ``init``, its ``teardown``),
            or None for all.
    """

    def __init__(
        self,
        learner: object,
        *,
        check: Callable[[Sequence[Callback]], None],
        localize: Callable[[Plan], Plan] | None = None,
        runs_here: Callable[[Callback], bool] | None = None,
    ) -> None:
        self.learner = learner
        self.callbacks: tuple[Callback, ...] = ()
        self.graph = CallbackGraph(())
        self.views: Views = ([], [])
        self.plans: dict[type[Phase], PhasePlans] = {}
        self.phases: list[type[Phase]] = [Phase, TrainingPhase, ValidationPhase]
        self._check, self._localize = check, localize
        self._runs_here = runs_here or (lambda callback: True)

    # ---- changes -------------------------------------------------------------------------

    def install(self, callbacks: Sequence[Callback], joining: Sequence[Callback]) -> None:
        """Validate and plan ``callbacks``; commit only if everything succeeds, then run the
        joining callbacks' ``init`` (producers first); a failing ``init`` puts everything back."""
        try:
            self._check(callbacks)
            with _collector_paused():
                graph = CallbackGraph(callbacks)
                views, plans = self._plan_all(graph)
        except CadenceError as error:
            error.callbacks = tuple(callbacks)  # `python -m cadence check` checks them all
            raise
        previous = self.saved()
        self.callbacks, self.graph, self.views = tuple(callbacks), graph, views
        _replace(self.plans, plans)
        joining_ids = {id(cb) for cb in joining}
        try:
            for i in graph.init_order():
                if id(callbacks[i]) in joining_ids and self._runs_here(callbacks[i]):
                    callbacks[i].init(views[0][i])
        except BaseException as exc:
            self.restore(previous)
            exc.add_note(f"Raised by {graph.labels[i]}.init; the learner's callbacks are unchanged.")
            raise

    def add(self, callback: Callback) -> None:
        (callback,) = check_callbacks([callback], "add_callback(callback)")
        if any(cb is callback for cb in self.callbacks):
            raise ValueError(f"{callback!r} is already in this learner; add a new instance instead.")
        self.install([*self.callbacks, callback], joining=[callback])

    def remove(self, target: Callback | type[Callback]) -> Callback:
        found = self.get(target) if isinstance(target, type) else next((cb for cb in self.callbacks if cb is target), None)
        if found is None:
            shown = target.__name__ if isinstance(target, type) else repr(target)
            raise ValueError(
                f"No callback {shown} to remove; the learner has "
                f"{', '.join(type(cb).__name__ for cb in self.callbacks) or 'no callbacks'}."
            )
        self.install([cb for cb in self.callbacks if cb is not found], joining=[])
        return found

    def replace(self, callback: Callback) -> Callback | None:
        (callback,) = check_callbacks([callback], "replace_callback(callback)")
        if any(cb is callback for cb in self.callbacks):
            raise ValueError(f"{callback!r} is already in this learner; replace with a new instance instead.")
        old = self.get(callback.__class__)  # a throttled Recorder replaces a Recorder
        if old is None:
            self.add(callback)
            return None
        self.install([callback if cb is old else cb for cb in self.callbacks], joining=[callback])
        return old

    def saved(self) -> _Saved:
        """What ``restore`` puts back: the callbacks, graph, views and plans as they are now."""
        return _Saved(self.callbacks, self.graph, self.views, dict(self.plans), tuple(self.phases), getattr(self.learner, "batch"))

    def restore(self, saved: _Saved) -> None:
        """Put back what ``saved`` holds, without building (nor checking) it again; views of a
        batch the learner has since replaced (a custom phase's) are built anew."""
        self.callbacks, self.graph, self.views = saved.callbacks, saved.graph, saved.views
        self.phases[:] = saved.phases
        _replace(self.plans, saved.plans)
        if getattr(self.learner, "batch") is not saved.batch:
            self.rebuild_views()

    # ---- phases --------------------------------------------------------------------------

    def ensure_phase(self, kind: type[Phase]) -> None:
        """Build the plans of a phase class not seen so far."""
        if kind not in self.plans:
            self.plans[kind] = self._plans_for(self.graph, kind, *self.views)
            self.phases.append(kind)

    def rebuild_views(self) -> None:
        """The learner has a new batch (a custom phase's has more fields): the views hold the
        batch, so build them, and the plans that carry them, anew from the same graph."""
        self.views, plans = self._plan_all(self.graph)
        _replace(self.plans, plans)

    # ---- reading ---------------------------------------------------------------------------

    def get(self, cls: type[Callback]) -> Callback | None:
        return next((cb for cb in self.callbacks if isinstance(cb, cls)), None)

    def run_order(self) -> tuple[Callback, ...]:
        """The callbacks with producers of ``cbstate`` entries before their readers."""
        return tuple(self.callbacks[i] for i in self.graph.init_order())

    def non_empty(self, event: type[Event] | None = None, phase: type[Phase] | Phase | None = None) -> list[Plan]:
        """The non-empty plans in firing order, narrowed to ``event`` and ``phase``."""
        phase_type = type(phase) if isinstance(phase, Phase) else phase
        found: list[Plan] = []
        last: list[Plan] = []
        for kind in self.phases:
            if phase_type is not None and kind is not phase_type:
                continue
            for evt, plan in self.plans.get(kind, {}).items():
                if plan is not None and plan.calls and (event is None or evt is event):
                    # FitEnd fires after every epoch of every phase.
                    (last if evt is FitEnd else found).append(plan)
        return found + last

    def explain(self, event: type[Event] | None = None, phase: type[Phase] | Phase | None = None) -> str:
        parts = [plan.describe() for plan in self.non_empty(event, phase)]
        return "\n\n".join(parts) if parts else "No callback handles these events."

    def not_fired(self, event: Event, phase: Phase) -> CadenceError:
        """The error for ``event`` fired in ``phase``, which has no plan for it."""
        name = type(phase).__name__
        if type(phase) not in self.plans:
            return CadenceError(
                f"{name} fired {type(event).__name__}, but no plans exist for {name} yet: they are "
                f"built when its epoch starts. Run it with learner.epoch({name}(), data) or "
                f"learner.step({name}(), batch) instead of calling fire() directly."
            )
        return CadenceError(
            f"{name} fired {type(event).__name__}, which is not in {name}.events; add it there so "
            f"that its plan is built."
        )

    def tear_down(self, pending: BaseException | None) -> Exception | None:
        """Run every callback's ``teardown``, each one whatever the others do. A failure is a
        note on ``pending``; with nothing pending, the first is returned (the others noted on
        it) for the caller to raise."""
        failed: Exception | None = None
        for label, callback in zip(self.graph.labels, self.callbacks):
            if not self._runs_here(callback):
                continue  # a rank-zero callback on another rank: it never ran here
            try:
                callback.teardown()
            except Exception as error:
                if pending is None and failed is None:
                    error.add_note(f"Raised by {label}.teardown.")
                    failed = error
                else:
                    (pending or failed).add_note(f"{label}.teardown failed too: {type(error).__name__}: {error}")  # type: ignore[union-attr]
        return failed

    # ---- building ------------------------------------------------------------------------

    def _plan_all(self, graph: CallbackGraph) -> tuple[Views, dict[type[Phase], PhasePlans]]:
        """Views of the learner for ``graph``'s callbacks (one per callback, and one per handler
        that declares its own access), and every known phase's plans with them."""
        learner = self.learner
        views = [LearnerView(learner, label, access) for label, access in zip(graph.labels, graph.accesses)]
        handler_views = [
            {h: LearnerView(learner, label, access, handler_access_label(label, h)) for h, access in own.items()}
            for label, own in zip(graph.labels, graph.handler_accesses)
        ]
        return (views, handler_views), {kind: self._plans_for(graph, kind, views, handler_views) for kind in self.phases}

    def _plans_for(
        self, graph: CallbackGraph, kind: type[Phase], views: Sequence[LearnerView], handler_views: HandlerViews
    ) -> PhasePlans:
        # Empty batch- and epoch-level plans are stored as None so that firing them costs one
        # lookup. Fit-level plans always reach the executor, so that executors see fit
        # boundaries (a thread pool can shut down at FitEnd, a timer can print its table).
        plans: PhasePlans = {}
        localize = self._localize
        for event in kind.events:
            plan = graph.plan(event, kind, views, handler_views)
            if not plan.calls and kind is not Phase:
                plans[event] = None
            else:  # each process's copy: rank-zero handlers, agreed stops
                plans[event] = plan if localize is None else localize(plan)
        return plans


def _replace(plans: dict[type[Phase], PhasePlans], new: Mapping[type[Phase], PhasePlans]) -> None:
    plans.clear()
    plans.update(new)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    # Building allocates many small, acyclic objects (edges, reasons); with hundreds of
    # callbacks the cyclic collector's full passes over the process made it superlinear.
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def check_callbacks(callbacks: Iterable[Callback], where: str | None = None) -> list[Callback]:
    """``callbacks`` as a list, checked: instances of ``Callback``, each listed once.

    Raises:
        TypeError, ValueError: naming the entry (``where``, or ``callbacks[i]``) and the fix.
    """
    if isinstance(callbacks, Callback) or not isinstance(callbacks, Iterable):
        raise TypeError(f"callbacks must be a list of Callback instances, e.g. [Recorder()]; got {callbacks!r}.")
    checked = list(callbacks)
    for i, cb in enumerate(checked):
        name = where or f"callbacks[{i}]"
        if isinstance(cb, type) and issubclass(cb, Callback):
            raise TypeError(f"{name} got the class {cb.__name__}; pass an instance: {cb.__name__}().")
        if not isinstance(cb, Callback):
            raise TypeError(f"{name} got a {type(cb).__name__}, not a Callback; subclass cadence.Callback.")
    for i, cb in enumerate(checked):
        if any(cb is other for other in checked[:i]):
            raise ValueError(f"callbacks[{i}] ({cb!r}) is listed twice; pass each instance once.")
    return checked


def missing_defaults(chosen: Sequence[Callback]) -> list[Callback]:
    """``Recorder()``, ``Metrics()``, ``ProgressPrinter()``, ``MetricsPrinter()`` and
    ``StopOnNaNLoss()``, each unless ``chosen`` has a callback of its type."""
    from cadence.callbacks.metrics import Metrics  # the built-ins import the learner's modules
    from cadence.callbacks.metrics_printer import MetricsPrinter
    from cadence.callbacks.nan import StopOnNaNLoss
    from cadence.callbacks.progress import ProgressPrinter
    from cadence.callbacks.recorder import Recorder

    defaults: list[Callback] = [Recorder(), Metrics(), ProgressPrinter(), MetricsPrinter(), StopOnNaNLoss()]
    return [cb for cb in defaults if not any(isinstance(c, type(cb)) for c in chosen)]
