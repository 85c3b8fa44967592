"""What a new ``fit`` does to the callbacks' state: each callback's ``reset()`` runs before
``FitBegin`` of every fit but its first, so that a second ``fit`` (or a callback instance
reused in a new learner) does not go on from a finished run's state: a one-cycle schedule at
its end, early stopping with the old run's best. Callbacks whose ``reset_when`` is
``"learner"`` (the counts that are a learner's step axis: ``Recorder``, ``Metrics``, the
printers) are reset only when they start a fit in another learner than their last. A resumed
fit restores the checkpoint's state after ``FitBegin``, over the reset.

A callback that keeps state (it implements ``state_dict``) but says nothing about a new fit
(no ``reset``) goes on with that state, and the learner says so with a warning.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

from cadence.callback import Callback, callback_labels

__all__ = ["last_fit_in", "reset_for_fit"]

log = logging.getLogger(__name__)

# id -> (callback, the learner of its last fit), for every callback that has started a fit.
# Keyed by id so that callbacks need not be hashable; weak, so that neither is kept alive.
_STARTED: dict[int, tuple[weakref.ref[Callback], weakref.ref[Any]]] = {}


def reset_for_fit(learner: Any) -> None:
    """Called by ``fit`` right before ``FitBegin``: ``reset()`` the callbacks that have started
    a fit before (per their ``reset_when``), and warn about those that keep state without a
    ``reset``."""
    callbacks = list(learner.callbacks)
    for label, callback in zip(callback_labels(callbacks), callbacks):
        chain = _chain(callback)
        last = [_last_learner(cb) for cb in chain]
        if any(found is not None for found in last):
            if any(type(cb).reset is Callback.reset and type(cb).state_dict is not Callback.state_dict for cb in chain):
                log.warning(
                    "%s starts this fit with the state its previous fit left: it keeps state "
                    "(state_dict) but has no reset(), which fit calls before FitBegin of every fit "
                    "after the first. Implement %s.reset() to set the state back as __init__ leaves "
                    "it, or, to keep it across fits on purpose, as a method that keeps it.",
                    label, type(chain[-1]).__name__,
                )
            elsewhere = any(found is not None and found is not learner for found in last)
            if callback.reset_when != "learner" or elsewhere:
                callback.reset()
        for cb in chain:
            _start(cb, learner)


def last_fit_in(callback: object, learner: Any) -> bool:
    """Whether ``callback``'s last fit was in ``learner``: its next fit there goes on from it
    (``cadence.checkpointing.folder`` lets it save on into its folder)."""
    return _last_learner(callback) is learner


def _last_learner(callback: object) -> Any:
    """The learner of ``callback``'s last fit, or None before its first (or once that learner
    is gone: then ``object()``, another learner all the same)."""
    entry = _STARTED.get(id(callback))
    if entry is None or entry[0]() is not callback:
        return None
    found = entry[1]()
    return object() if found is None else found


def _start(callback: Callback, learner: Any) -> None:
    key = id(callback)
    _STARTED[key] = (weakref.ref(callback, lambda _: _STARTED.pop(key, None)), weakref.ref(learner))


def _chain(callback: Callback) -> list[Callback]:
    """``callback``, and what it wraps where it keeps that in ``.callback`` (as ``throttle``
    does): a wrapper answers for the callback inside it."""
    chain = [callback]
    while isinstance(inner := vars(chain[-1]).get("callback"), Callback) and all(inner is not c for c in chain):
        chain.append(inner)
    return chain
