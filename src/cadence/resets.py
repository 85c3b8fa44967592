"""What a new ``fit`` does to the callbacks' state: each callback's ``reset()`` runs before
``FitBegin`` of every fit but its first, in whichever learner, so that a second ``fit`` (or a
callback instance reused in a new learner) does not go on from a finished run's state: a
one-cycle schedule at its end, early stopping with the old run's best. A resumed fit restores
the checkpoint's state after ``FitBegin``, over the reset.

A callback that keeps state (it implements ``state_dict``) but says nothing about a new fit
(no ``reset``) goes on with that state, and the learner says so with a warning.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterable

from cadence.callback import Callback, callback_labels

__all__ = ["reset_for_fit"]

log = logging.getLogger(__name__)

# id -> callback, for every callback that has started a fit: reset before its next one. Keyed by
# id so that callbacks need not be hashable; an entry goes when its callback is collected.
_STARTED: weakref.WeakValueDictionary[int, Callback] = weakref.WeakValueDictionary()


def reset_for_fit(callbacks: Iterable[Callback]) -> None:
    """Called by ``fit`` right before ``FitBegin``: ``reset()`` every callback that has started
    a fit before, and warn about those among them that keep state without a ``reset``."""
    callbacks = list(callbacks)
    for label, callback in zip(callback_labels(callbacks), callbacks):
        chain = _chain(callback)
        if any(_STARTED.get(id(cb)) is cb for cb in chain):
            if any(type(cb).reset is Callback.reset and type(cb).state_dict is not Callback.state_dict for cb in chain):
                log.warning(
                    "%s starts this fit with the state its previous fit left: it keeps state "
                    "(state_dict) but has no reset(), which fit calls before FitBegin of every fit "
                    "after the first. Implement %s.reset() to set the state back as __init__ leaves "
                    "it, or, to keep it across fits on purpose, as a method that keeps it.",
                    label, type(chain[-1]).__name__,
                )
            callback.reset()
        for cb in chain:
            _STARTED[id(cb)] = cb


def _chain(callback: Callback) -> list[Callback]:
    """``callback``, and what it wraps where it keeps that in ``.callback`` (as ``throttle``
    does): a wrapper answers for the callback inside it."""
    chain = [callback]
    while isinstance(inner := vars(chain[-1]).get("callback"), Callback) and all(inner is not c for c in chain):
        chain.append(inner)
    return chain
