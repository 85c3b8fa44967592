"""The callback graph: validation at build time and one ordered plan per (event, phase).

Edges, for the callbacks that handle one (event, phase):

- ``run_after``: global and transitive (also through callbacks that do not handle the event);
- automatic: a callback that writes a path runs before one that only reads an overlapping path;
- resolutions: two writers of overlapping paths that nothing else orders ask
  ``a.resolve_conflict(b)`` and ``b.resolve_conflict(a)``; no answer is a ``ConflictError``.

Callbacks with no constraint between them keep the order the user gave.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cadence.access import AccessSet, Path, dotted, parse_state_access
from cadence.callback import PRODUCERS, Callback, NoConflict, Resolution, RunFirst, Unresolvable
from cadence.errors import ConflictError, CycleError, DeclarationError, MissingStateError
from cadence.events import Event
from cadence.phases import Phase

__all__ = ["CallbackGraph", "Plan"]

HandlerCall = Callable[[Event, Phase, Any], Any]


@dataclass(eq=False, slots=True)
class Plan:
    """The handlers of one (event, phase), in run order, with the edges that ordered them.

    Attributes:
        calls: ``(bound handler, view)`` pairs in run order: what an executor calls.
        labels: ``"Callback.method"`` per handler, for messages.
        accesses: each handler's callback's declared access.
        predecessors: per handler, the positions of the handlers it must run after.
        reasons: per handler, why each edge into it exists.
        cache: a place for an executor to keep what it precomputes per plan.
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

    def describe(self) -> str:
        """The plan as ``explain()`` prints it."""
        lines = [f"{self.event.__name__} in {self.phase.__name__}:"]
        for position, label in enumerate(self.labels):
            lines.append(f"  {position + 1}. {label}")
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


def _labels(callbacks: Sequence[Callback]) -> tuple[str, ...]:
    counts = Counter(type(cb).__name__ for cb in callbacks)
    seen: Counter[str] = Counter()
    labels = []
    for cb in callbacks:
        name = type(cb).__name__
        seen[name] += 1
        labels.append(name if counts[name] == 1 else f"{name}#{seen[name]}")
    return tuple(labels)


class CallbackGraph:
    """Validates a list of callbacks and builds their plans.

    Construction checks what holds for every event: declarations, ``run_after`` cycles and
    ``cbstate`` entries without a producer. ``plan`` orders one (event, phase) and raises
    ``ConflictError`` or ``CycleError`` for it.
    """

    def __init__(self, callbacks: Sequence[Callback]) -> None:
        self.callbacks = tuple(callbacks)
        self.labels = _labels(self.callbacks)
        self.accesses = tuple(
            parse_state_access(label, cb.state_access) for label, cb in zip(self.labels, self.callbacks)
        )
        self._writes = _WriteIndex()
        for owner, access in enumerate(self.accesses):
            for path in access.writes:
                self._writes.add(owner, path)
        self._after = self._run_after_edges()
        self._reach = self._closure()
        self._check_producers()
        self._answers: dict[tuple[int, int], Resolution | None] = {}

    # ---- checks that hold for every event ------------------------------------------------

    def _run_after_edges(self) -> list[dict[int, str]]:
        """Per callback, the callbacks its ``run_after`` names (its direct predecessors)."""
        after: list[dict[int, str]] = [{} for _ in self.callbacks]
        for i, cb in enumerate(self.callbacks):
            types = cb.run_after
            if not isinstance(types, (tuple, list)) or not all(isinstance(t, type) for t in types):
                raise DeclarationError(
                    f"{self.labels[i]}.run_after must be a tuple of callback classes, e.g. "
                    f"run_after = (Recorder,); got {types!r}."
                )
            for j, other in enumerate(self.callbacks):
                if i != j and isinstance(other, tuple(types)):
                    after[i][j] = f"{self.labels[i]}.run_after includes {type(other).__name__}"
        return after

    def _closure(self) -> list[set[int]]:
        """Per callback, every callback that must run after it (transitively)."""
        n = len(self.callbacks)
        successors: list[list[int]] = [[] for _ in range(n)]
        for i, preds in enumerate(self._after):
            for j in preds:
                successors[j].append(i)
        order = _topological(n, successors)
        if len(order) < n:
            cycle = _find_cycle(set(range(n)) - set(order), successors)
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
        for reader, access in enumerate(self.accesses):
            for path in access.reads:
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
        successors: list[list[int]] = [[] for _ in range(n)]
        for i, preds in enumerate(self._after):
            for j in preds:
                successors[j].append(i)
        for reader, access in enumerate(self.accesses):
            for path in access.reads:
                if path[0] == "cbstate":
                    for writer, _ in self._writes.overlapping(path):
                        if writer != reader:
                            successors[writer].append(reader)
        return _topological(n, successors, break_cycles=True)

    # ---- one (event, phase) ---------------------------------------------------------------

    def plan(self, event: type[Event], phase: type[Phase], views: Sequence[Any]) -> Plan:
        """Order the handlers of (event, phase); ``views[i]`` is callback i's learner view."""
        members: list[tuple[int, str]] = []
        for i, cb in enumerate(self.callbacks):
            method = cb.handler_for(event, phase)
            if method is not None:
                members.append((i, method))
        position = {i: p for p, (i, _) in enumerate(members)}
        edges: dict[tuple[int, int], list[str]] = defaultdict(list)

        for p, (i, _) in enumerate(members):
            for j in self._reach[i]:
                q = position.get(j)
                if q is not None:
                    edges[(p, q)].append(self._run_after_reason(i, j))

        local = _WriteIndex()
        for p, (i, _) in enumerate(members):
            for path in self.accesses[i].writes:
                local.add(p, path)
        conflicts: dict[tuple[int, int], tuple[Path, Path]] = {}
        for q, (j, _) in enumerate(members):
            for path in self.accesses[j].reads:
                for p, written in local.overlapping(path):
                    if p != q:
                        reason = (
                            f"{self.labels[members[p][0]]} writes {dotted(written)}, "
                            f"{self.labels[j]} reads {dotted(path)}"
                        )
                        edges[(p, q)].append(reason)
            for path in self.accesses[j].writes:
                for p, written in local.overlapping(path):
                    if p < q:
                        conflicts.setdefault((p, q), (written, path))

        successors: list[set[int]] = [set() for _ in members]
        for p, q in edges:
            successors[p].add(q)
        for (p, q), (path_p, path_q) in conflicts.items():
            if _reaches(successors, p, q) or _reaches(successors, q, p):
                continue
            first = self._resolve(members[p][0], members[q][0], event, phase, path_p, path_q)
            if first is not None:
                before, after = (p, q) if first == members[p][0] else (q, p)
                i, j = members[before][0], members[after][0]
                edges[(before, after)].append(
                    f"{self.labels[i]} and {self.labels[j]} both write {dotted(path_p)}; "
                    f"resolve_conflict says RunFirst({self.labels[i]})"
                )
                successors[before].add(after)

        order = _topological(len(members), successors)
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
            reasons.append([f"after {self.labels[members[order[r]][0]]}: {w}" for r, why in edges_in for w in why])
        chosen = [members[p] for p in order]
        return Plan(
            event=event,
            phase=phase,
            callbacks=tuple(self.callbacks[i] for i, _ in chosen),
            calls=tuple((getattr(self.callbacks[i], m), views[i]) for i, m in chosen),
            labels=tuple(f"{self.labels[i]}.{m}" for i, m in chosen),
            accesses=tuple(self.accesses[i] for i, _ in chosen),
            predecessors=tuple(tuple(ps) for ps in predecessors),
            reasons=tuple(tuple(rs) for rs in reasons),
        )

    def _run_after_reason(self, i: int, j: int) -> str:
        if i in self._after[j]:
            return self._after[j][i]
        # Transitive: show the chain of run_after declarations from i to j.
        parent: dict[int, int] = {i: i}
        queue = deque([i])
        while queue:
            node = queue.popleft()
            for nxt, preds in enumerate(self._after):
                if node in preds and nxt not in parent:
                    parent[nxt] = node
                    queue.append(nxt)
        chain = [j]
        while chain[-1] != i:
            chain.append(parent[chain[-1]])
        names = " → ".join(self.labels[k] for k in reversed(chain))
        return f"run_after chain {names}"

    def _resolve(
        self, i: int, j: int, event: type[Event], phase: type[Phase], path_i: Path, path_j: Path
    ) -> int | None:
        """Ask the pair how to order; return the index that runs first, or None for any order."""
        key = (i, j)
        if key not in self._answers:
            self._answers[key] = self._ask_both(i, j, event, phase, path_i, path_j)
        answer = self._answers[key]
        if isinstance(answer, RunFirst):
            return i if answer.callback is self.callbacks[i] else j
        return None

    def _ask_both(
        self, i: int, j: int, event: type[Event], phase: type[Phase], path_i: Path, path_j: Path
    ) -> Resolution:
        a, b = self.callbacks[i], self.callbacks[j]
        answer_a = self._ask(i, j)
        answer_b = self._ask(j, i)
        where = f"at {event.__name__} in {phase.__name__}"
        if answer_a is NotImplemented and answer_b is NotImplemented:
            na, nb = self.labels[i], self.labels[j]
            same = a.__class__ is b.__class__  # a throttled Writer is still a Writer
            raise ConflictError(
                f"Write conflict between {na} and {nb} {where}:\n"
                f"  - {na} writes {dotted(path_i)}\n  - {nb} writes {dotted(path_j)}\n"
                + (
                    f"Two {type(a).__name__} callbacks write the same state; keep one of them.\n"
                    if same
                    else ""
                )
                + f"Nothing orders them. Implement resolve_conflict on one of them, e.g.\n\n"
                f"    def resolve_conflict(self, other):  # in {type(a).__name__}\n"
                f"        if isinstance(other, {type(b).__name__}):\n"
                f"            return RunFirst(self)  # or RunFirst(other), NoConflict(), Unresolvable()\n"
                f"        return NotImplemented\n\n"
                f"or add run_after = ({type(a).__name__},) to {type(b).__name__}."
            )
        if answer_a is not NotImplemented and answer_b is not NotImplemented and answer_a != answer_b:
            raise ConflictError(
                f"{self.labels[i]} and {self.labels[j]} disagree on their order {where}: "
                f"{self.labels[i]}.resolve_conflict returned {self._show(answer_a)} and "
                f"{self.labels[j]}.resolve_conflict returned {self._show(answer_b)}. Make them agree, "
                f"or return NotImplemented from one."
            )
        answer: Resolution = answer_a if answer_a is not NotImplemented else answer_b
        if isinstance(answer, Unresolvable):
            raise ConflictError(
                f"{self.labels[i]} and {self.labels[j]} cannot be used together: both write "
                f"{dotted(path_i)} {where} and resolve_conflict says Unresolvable(). Remove one of them."
            )
        return answer

    def _ask(self, i: int, j: int) -> Any:
        answer = self.callbacks[i].resolve_conflict(self.callbacks[j])
        if answer is NotImplemented or isinstance(answer, (NoConflict, Unresolvable)):
            return answer
        if isinstance(answer, RunFirst):
            if answer.callback is self.callbacks[i] or answer.callback is self.callbacks[j]:
                return answer
            raise DeclarationError(
                f"{self.labels[i]}.resolve_conflict({self.labels[j]}) returned "
                f"RunFirst({answer.callback!r}); RunFirst must name one of the two, "
                f"RunFirst(self) or RunFirst(other)."
            )
        raise DeclarationError(
            f"{self.labels[i]}.resolve_conflict({self.labels[j]}) returned {answer!r}; return "
            f"NoConflict(), RunFirst(self), RunFirst(other), Unresolvable() or NotImplemented."
        )

    def _show(self, answer: Resolution) -> str:
        if isinstance(answer, RunFirst):
            return f"RunFirst({self.labels[self.callbacks.index(answer.callback)]})"
        return f"{type(answer).__name__}()"

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
        cycle = _find_cycle(left, [sorted(s) for s in successors])
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


def _topological(n: int, successors: Sequence[Iterable[int]], break_cycles: bool = False) -> list[int]:
    """Kahn's algorithm, always taking the lowest ready index (the user's order breaks ties).

    Returns fewer than ``n`` nodes when there is a cycle, unless ``break_cycles``, which then
    takes the lowest remaining node regardless of its predecessors.
    """
    indegree = [0] * n
    for succ in successors:
        for j in succ:
            indegree[j] += 1
    ready = [i for i in range(n) if indegree[i] == 0]
    heapq.heapify(ready)
    order: list[int] = []
    done = [False] * n
    while len(order) < n:
        if not ready:
            if not break_cycles:
                break
            ready = [min(i for i in range(n) if not done[i])]
            indegree[ready[0]] = 0
        i = heapq.heappop(ready)
        if done[i]:
            continue
        done[i] = True
        order.append(i)
        for j in successors[i]:
            indegree[j] -= 1
            if indegree[j] == 0 and not done[j]:
                heapq.heappush(ready, j)
    return order


def _reaches(successors: Sequence[set[int]], start: int, goal: int) -> bool:
    stack, seen = [start], {start}
    while stack:
        node = stack.pop()
        for nxt in successors[node]:
            if nxt == goal:
                return True
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return False


def _find_cycle(nodes: set[int], successors: Sequence[Sequence[int]]) -> list[int]:
    """A cycle among ``nodes``: what Kahn's algorithm left, where every node has a predecessor
    that was left too. Walking predecessors must therefore come back to a node already seen."""
    predecessors: dict[int, list[int]] = defaultdict(list)
    for i in sorted(nodes):
        for j in successors[i]:
            if j in nodes:
                predecessors[j].append(i)
    walk: list[int] = []
    seen: dict[int, int] = {}
    node = min(nodes)
    while node not in seen:
        seen[node] = len(walk)
        walk.append(node)
        node = predecessors[node][0]
    return list(reversed(walk[seen[node] :]))
