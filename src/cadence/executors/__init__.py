"""Executors run a plan: the handlers of one (event, phase), in an order the graph allows.

- ``protocol``: open this first. The ``Executor`` protocol (what a custom executor must do),
  ``Schedule`` (which handlers of a plan may overlap in time) and the helpers both executors use.
- ``serial``: ``SerialExecutor``, the default, runs handlers one after another.
- ``threaded``: ``ThreadedExecutor`` runs independent handlers at the same time.
"""

from cadence.executors.protocol import Executor, Schedule, add_handler_note, conflicting
from cadence.executors.serial import SerialExecutor
from cadence.executors.threaded import ThreadedExecutor

__all__ = ["Executor", "Schedule", "SerialExecutor", "ThreadedExecutor", "add_handler_note", "conflicting"]
