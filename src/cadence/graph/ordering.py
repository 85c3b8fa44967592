"""Graph algorithms on callback indices: a stable topological order, reachability, cycles."""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Iterable, Sequence

__all__ = ["find_cycle", "reaches", "topological"]


def topological(n: int, successors: Sequence[Iterable[int]], break_cycles: bool = False) -> list[int]:
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


def reaches(successors: Sequence[set[int]], start: int, goal: int) -> bool:
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


def find_cycle(nodes: set[int], successors: Sequence[Sequence[int]]) -> list[int]:
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
