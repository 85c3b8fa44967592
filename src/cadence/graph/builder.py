"""The callback graph: validation at build time and one ordered plan per (event, phase).

Edges, for the callbacks that handle one (event, phase):

- ``run_after``: global and transitive (also through callbacks that do not handle the event);
  a plan keeps only the nearest ones (an edge from B to C, not from A to C, for a chain
  A → B → C of handlers), so that long chains stay cheap to plan and to explain;
- automatic: a callback that writes a path runs before one that only reads an overlapping path
  (what each handles the event with declares: its own ``@on(..., access=...)`` if it has one,
  else the callback's ``state_access``);
- resolutions: two writers of overlapping paths that nothing else orders ask
  ``a.resolve_conflict(b)`` and ``b.resolve_conflict(a)``; no answer is a ``ConflictError``.

Callbacks with no constraint between them keep the order the user gave.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cadence.access import AccessSet, Path, dotted, merge_accesses, parse_state_access
from cadence.callback import PRODUCERS, Callback, Handler, callback_labels, handled_by, handler_accesses
from cadence.graph.conflicts import Resolver
from cadence.errors import CycleError, DeclarationError, MissingStateError
from cadence.events import Event
from cadence.graph.ordering import find_cycle, reaches, topological
from cadence.graph.placement import check_placements, placement_of
from cadence.phases import Phase, phases_firing

__all__ = ["CallbackGraph", "Edge", "Plan"]

HandlerCall = Callable[[Event, Phase, Any], Any]


@dataclass(frozen=True, slots=True)
class Edge:
    """One ordering edge of a plan: the handler at ``before`` runs before the one at ``after``
    (positions in run order), for ``reasons``; ``resolved`` marks an edge that a
    ``resolve_conflict`` answer added."""

    before: int
    after: int
    reasons: tuple[str, ...]
    resolved: bool = False


@dataclass(eq=False, slots=True)
class Plan:
    """The handlers of one (event, phase), in run order, with the edges that ordered them.

    Attributes:
        calls: ``(bound handler, view)`` pairs in run order: what an executor calls.
        labels: ``"Callback.method"`` per handler, for messages.
        accesses: what each handler declares: its own ``access=``, else its callback's
            ``state_access``.
        predecessors: per handler, the positions of the handlers it must run after.
        reasons: per handler, one line per edge into it: the handler it runs after and why.
        cache: a place for an executor to keep what it precomputes per plan.
        edges: every edge, with its reasons, for pictures of the plan (``cadence.graph.render``).
    """

    event: type[Event]
    phase: type[Phase]
    callbacks: tuple[Callback, ...]
    calls: tuple[tuple[HandlerCall, Any], ...]
    labels: tuple[str, ...]
    accesses: tuple[AccessSet, ...]
    predecessors: tuple[tuple[int, ...], ...]
    reasons: tuple[tuple[str, ...], ...]
    cache: dict[str, Any] = field(default_factory=dict)
    edges: tuple[Edge, ...] = ()

    def describe(self) -> str:
        """The plan as ``explain()`` prints it."""
        lines = [f"{self.event.__name__} in {self.phase.__name__}:"]
        for position, label in enumerate(self.labels):
            lines.append(f"  {position + 1}. {label}")
            if placement_of(self.callbacks[position]) == "rank_zero":
                lines.append("       on rank zero only")
            lines.extend(f"       {reason}" for reason in self.reasons[position])
        return "\n".join(lines)


class _WriteIndex:
    """Finds the writers of paths overlapping a given path without comparing every pair."""

    def __init__(self) -> None:
        self._exact: dict[Path, list[tuple[int, Path]]] = defaultdict(list)
        self._below: dict[Path, list[tuple[int, Path]]] = defaultdict(list)

    def add(self, owner: int, path: Path) -> None:
        self._exact[path].append((owner, path))
        for length in range(1, len(path) + 1):
            self._below[path[:length]].append((owner, path))

    def overlapping(self, path: Path) -> list[tuple[int, Path]]:
        found = list(self._below.get(path, ()))
        for length in range(1, len(path)):
            found.extend(self._exact.get(path[:length], ()))
        return found


class CallbackGraph:
    """Validates a list of callbacks and builds their plans.

    Construction checks what holds for every event: declarations, ``run_after`` cycles and
    ``cbstate`` entries without a producer. ``plan`` orders one (event, phase) and raises
    ``ConflictError`` or ``CycleError`` for it.
    """

    def __init__(self, callbacks: Sequence[Callback]) -> None:
        self.callbacks = tuple(callbacks)
        self.labels = tuple(callback_labels(self.callbacks))
        self.accesses = tuple(
            parse_state_access(label, cb.state_access) for label, cb in zip(self.labels, self.callbacks)
        )
        # Per callback, the registrations that declare their own access (@on(..., access=...)).
        self.handler_accesses: tuple[dict[Handler, AccessSet], ...] = tuple(
            handler_accesses(cb, label) for label, cb in zip(self.labels, self.callbacks)
        )
        # Per callback, everything it declares over all its handlers.
        self._declared = [merge_accesses([a, *own.values()]) for a, own in zip(self.accesses, self.handler_accesses)]
        self._writes = _WriteIndex()
        for owner, declared in enumerate(self._declared):
            for path in declared.writes:
                self._writes.add(owner, path)
        self._check_handlers()
        check_placements(self.labels, self.callbacks, self.accesses)
        self._after = self._run_after_edges()
        # Per callback, those whose run_after names it: for the closure and the init order.
        self._successors: list[list[int]] = [[] for _ in self.callbacks]
        for i, preds in enumerate(self._after):
            for j in preds:
                self._successors[j].append(i)
        self._reach = self._closure()
        self._check_producers()
        self._resolver = Resolver(self.callbacks, self.labels)

    # ---- checks that hold for every event ------------------------------------------------

    def _run_after_edges(self) -> list[dict[int, str]]:
        """Per callback, the callbacks its ``run_after`` names (its direct predecessors)."""
        after: list[dict[int, str]] = [{} for _ in self.callbacks]
        instances: dict[type, list[int]] = {}  # each named type's instances, found once
        for i, cb in enumerate(self.callbacks):
            types = cb.run_after
            if not isinstance(types, (tuple, list)) or not all(isinstance(t, type) for t in types):
                raise DeclarationError(
                    f"{self.labels[i]}.run_after must be a tuple of callback classes, e.g. "
                    f"run_after = (Recorder,); got {types!r}."
                )
            for kind in types:
                if kind not in instances:
                    instances[kind] = [j for j, other in enumerate(self.callbacks) if isinstance(other, kind)]
                for j in instances[kind]:
                    if i != j:
                        after[i][j] = f"{self.labels[i]}.run_after includes {type(self.callbacks[j]).__name__}"
        return after

    def _check_handlers(self) -> None:
        """Reject handlers whose (event, phase) no phase defined so far fires."""
        fires: dict[tuple[type[Event], type[Phase]], bool] = {}
        for label, cb in zip(self.labels, self.callbacks):
            for handler in cb.handlers:
                key = (handler.event, handler.phase)
                if key not in fires:
                    fires[key] = bool(phases_firing(handler.event, handler.phase))
                if not fires[key]:
                    raise DeclarationError(_never_fires(f"{label}.{handler.name}", *key))

    def _closure(self) -> list[set[int]]:
        """Per callback, every callback that must run after it (transitively)."""
        n = len(self.callbacks)
        successors = self._successors
        order = topological(n, successors)
        if len(order) < n:
            cycle = find_cycle(set(range(n)) - set(order), successors)
            steps = [
                f"  {self.labels[a]} runs before {self.labels[b]}: {self._after[b][a]}"
                for a, b in zip(cycle, cycle[1:] + cycle[:1])
            ]
            raise CycleError(
                "The callbacks' run_after declarations form a cycle:\n" + "\n".join(steps)
                + "\nRemove one of these run_after entries."
            )
        reach: list[set[int]] = [set() for _ in range(n)]
        for i in reversed(order):
            for j in successors[i]:
                reach[i].add(j)
                reach[i] |= reach[j]
        return reach

    def _check_producers(self) -> None:
        for reader, declared in enumerate(self._declared):
            for path in declared.reads:
                if path[0] != "cbstate" or len(path) == 1:
                    continue
                if not self._writes.overlapping(path):
                    producer = PRODUCERS.get(path[1])
                    fix = (
                        f"Add {producer}, which writes cbstate.{path[1]}."
                        if producer
                        else f'Add the callback that creates it (one that declares {{"cbstate.{path[1]}": WRITE}}).'
                    )
                    raise MissingStateError(
                        f"{self.labels[reader]} reads {dotted(path)}, but no callback writes it.\n{fix}"
                    )

    def init_order(self) -> list[int]:
        """Callback indices ordered so that producers of cbstate entries come before readers."""
        n = len(self.callbacks)
        successors = [list(after) for after in self._successors]
        for reader, access in enumerate(self.accesses):
            for path in access.reads:
                if path[0] == "cbstate":
                    for writer, _ in self._writes.overlapping(path):
                        if writer != reader:
                            successors[writer].append(reader)
        return topological(n, successors, break_cycles=True)

    # ---- one (event, phase) ---------------------------------------------------------------

    def plan(
        self,
        event: type[Event],
        phase: type[Phase],
        views: Sequence[Any],
        handler_views: Sequence[Mapping[Handler, Any]] | None = None,
    ) -> Plan:
        """Order the handlers of (event, phase); ``views[i]`` is callback i's learner view and
        ``handler_views[i]`` the views of its handlers that declare their own access."""
        members: list[tuple[int, str]] = []
        declared: list[AccessSet] = []  # what each member handles this event with
        registrations: list[Handler | None] = []
        for i, cb in enumerate(self.callbacks):
            handled = handled_by(cb, event, phase)
            if handled is not None:
                method, handler = handled
                members.append((i, method))
                registrations.append(handler)
                declared.append(self.accesses[i] if handler is None else self.handler_accesses[i][handler])
        position = {i: p for p, (i, _) in enumerate(members)}
        edges: dict[tuple[int, int], list[str]] = defaultdict(list)

        for p, (i, _) in enumerate(members):
            for j, reason in self._next_members(i, position):
                edges[(position[j], p)].append(reason)

        local = _WriteIndex()
        for p in range(len(members)):
            for path in declared[p].writes:
                local.add(p, path)
        conflicts: dict[tuple[int, int], tuple[Path, Path]] = {}
        for q, (j, _) in enumerate(members):
            for path in declared[q].reads:
                for p, written in local.overlapping(path):
                    if p != q:
                        reason = (
                            f"{self.labels[members[p][0]]} writes {dotted(written)}, "
                            f"{self.labels[j]} reads {dotted(path)}"
                        )
                        edges[(p, q)].append(reason)
            for path in declared[q].writes:
                for p, written in local.overlapping(path):
                    if p < q:
                        conflicts.setdefault((p, q), (written, path))

        successors: list[set[int]] = [set() for _ in members]
        for p, q in edges:
            successors[p].add(q)
        resolved: set[tuple[int, int]] = set()
        for (p, q), (path_p, path_q) in conflicts.items():
            i, j = members[p][0], members[q][0]
            if j in self._reach[i] or i in self._reach[j]:
                continue  # run_after orders them: no need to search
            if reaches(successors, p, q) or reaches(successors, q, p):
                continue
            first = self._resolver.first(i, j, event, phase, path_p, path_q)
            if first is not None:
                before, after = (p, q) if first == i else (q, p)
                winner, loser = self.labels[members[before][0]], self.labels[members[after][0]]
                edges[(before, after)].append(
                    f"{winner} and {loser} both write {dotted(path_p)}; resolve_conflict says RunFirst({winner})"
                )
                successors[before].add(after)
                resolved.add((before, after))

        order = topological(len(members), successors)
        if len(order) < len(members):
            self._raise_cycle(event, phase, members, edges, successors, order)
        rank = {p: r for r, p in enumerate(order)}
        incoming: list[list[tuple[int, list[str]]]] = [[] for _ in order]
        for (p, q), why in edges.items():
            incoming[rank[q]].append((rank[p], why))
        predecessors: list[list[int]] = []
        reasons: list[list[str]] = []
        for edges_in in incoming:
            edges_in.sort(key=lambda edge: edge[0])
            predecessors.append([r for r, _ in edges_in])
            # One line per edge, its reasons joined: a run_after edge that an access overlap
            # also implies (every edge into Checkpointer) is one edge, not two.
            reasons.append([f"after {self.labels[members[order[r]][0]]}: {'; '.join(why)}" for r, why in edges_in])
        chosen = [members[p] for p in order]

        def view(p: int) -> Any:
            i, handler = members[p][0], registrations[p]
            return views[i] if handler is None or handler_views is None else handler_views[i][handler]

        return Plan(
            event=event,
            phase=phase,
            callbacks=tuple(self.callbacks[i] for i, _ in chosen),
            calls=tuple((getattr(self.callbacks[i], m), view(p)) for p, (i, m) in zip(order, chosen)),
            labels=tuple(f"{self.labels[i]}.{m}" for i, m in chosen),
            accesses=tuple(declared[p] for p in order),
            predecessors=tuple(tuple(ps) for ps in predecessors),
            reasons=tuple(tuple(rs) for rs in reasons),
            edges=tuple(
                Edge(rank[p], rank[q], tuple(why), (p, q) in resolved)
                for (p, q), why in sorted(edges.items(), key=lambda item: (rank[item[0][1]], rank[item[0][0]]))
            ),
        )

    def _next_members(self, target: int, members: Mapping[int, int]) -> Iterator[tuple[int, str]]:
        """The ``members`` that ``run_after`` puts before ``target`` with no other member in
        between, each with the reason: one declaration, or the shortest chain through
        callbacks that are not members."""
        before: dict[int, int] = {target: target}  # node -> the node after it, towards target
        queue = deque([target])
        while queue:
            node = queue.popleft()
            for prev in self._after[node]:
                if prev in before:
                    continue
                before[prev] = node
                if prev not in members:
                    queue.append(prev)
                elif node == target:
                    yield prev, self._after[target][prev]
                else:
                    chain = [prev]
                    while chain[-1] != target:
                        chain.append(before[chain[-1]])
                    yield prev, f"run_after chain {' → '.join(self.labels[k] for k in chain)}"

    def _raise_cycle(
        self,
        event: type[Event],
        phase: type[Phase],
        members: list[tuple[int, str]],
        edges: dict[tuple[int, int], list[str]],
        successors: list[set[int]],
        order: list[int],
    ) -> None:
        left = set(range(len(members))) - set(order)
        cycle = find_cycle(left, [sorted(s) for s in successors])
        steps = []
        for p, q in zip(cycle, cycle[1:] + cycle[:1]):
            a, b = self.labels[members[p][0]], self.labels[members[q][0]]
            steps.append(f"  {a} runs before {b}: {'; '.join(edges[(p, q)])}")
        raise CycleError(
            f"The callbacks form a cycle at {event.__name__} in {phase.__name__}:\n"
            + "\n".join(steps)
            + "\nBreak one of these edges: remove a run_after entry, or narrow a state_access "
            "declaration (READ where the callback does not write)."
        )


def _never_fires(handler: str, event: type[Event], phase: type[Phase]) -> str:
    where = f"{handler} handles {event.__name__} in {phase.__name__}, which never fires: "
    firing = phases_firing(event)
    # The most general phases that fire it: handlers for a phase also run for its subclasses.
    general = [kind for kind in firing if not any(base is not kind and issubclass(kind, base) for base in firing)]
    if not general:
        return (
            f"{where}no phase lists {event.__name__} in its events. Add it to the events of the "
            f"phase that fires it."
        )
    if general == [Phase]:
        return f"{where}{event.__name__} fires with the plain Phase(); use @on({event.__name__})."
    names = ", ".join(kind.__name__ for kind in general)
    return f"{where}{event.__name__} fires in {names}; use @on({event.__name__}, phase={general[0].__name__})."
