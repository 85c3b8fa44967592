"""Callbacks' state across fits: what a new ``fit`` resets, and which loaded state it keeps.

- ``resets``: open this first. Each callback's ``reset()`` before ``FitBegin`` of every fit but
  its first (or only in another learner, ``reset_when = "learner"``), and the warning, on the
  ``cadence.resets`` logger, for a callback that keeps state but has no ``reset()``.
- ``loads``: every ``load_state_dict`` counted, so that state loaded between two fits is kept
  by the next fit and state a resume restored is not.

This package imports neither module: ``callback`` imports ``loads``, and ``resets`` imports
``callback``.
"""
