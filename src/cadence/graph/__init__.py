"""The callback graph: from the callbacks' declarations to one ordered plan per (event, phase).

- ``builder``: open this first. ``CallbackGraph`` validates the callbacks (paths, missing
  state, handlers that never fire) and builds each ``Plan``: its handlers in run order, with
  the reason for every edge.
- ``installed``: a learner's callbacks as installed (``InstalledCallbacks``): the graph, the
  views, the plans of every phase, and every change to them, committed whole or not at all.
- ``conflicts``: asks two writers of the same state how to order themselves
  (``resolve_conflict``), once per pair.
- ``ordering``: the graph algorithms (stable topological order, reachability, cycles).
- ``render``: the plans as a picture: Mermaid and Graphviz DOT text, SVG through ``dot``.
- ``check``: every declaration error of a list of callbacks (``python -m cadence check``).
- ``placement``: the checks of each callback's ``placement`` (every rank, or rank zero only).
"""

from cadence.graph.builder import CallbackGraph, Edge, HandlerCall, Plan

__all__ = ["CallbackGraph", "Edge", "HandlerCall", "Plan"]
