"""What a new ``fit`` does to the callbacks' state: each callback's ``reset()`` runs before
``FitBegin`` of every fit but its first (and when it joins a learner during a fit, after a fit
of its own before), so that a second ``fit`` (or a callback instance reused in a new learner)
does not go on from a finished run's state: a one-cycle schedule at its end, early stopping with
the old run's best. Callbacks whose ``reset_when`` is ``"learner"`` (the counts that are a
learner's step axis: ``Recorder``, ``Metrics``, the printers) are reset only when they start a
fit in another learner than their last. A resumed fit restores the checkpoint's state after
``FitBegin``, over the reset.

State loaded explicitly between fits (``callback.load_state_dict(...)`` after a fit ended, or
before the first) is what the user asked the next fit to start from: that fit does not reset
the callback. State a fit restored itself (a resume) is reset by the next fit as usual
(``cadence.lifecycle.loads`` counts the loads, ``fit_ended`` marks where each fit ended).

A callback that keeps state (it implements ``state_dict``) but says nothing about a new fit
(no ``reset``) goes on with that state, and the learner says so with a warning, once per
instance.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cadence.callback import Callback, callback_labels
from cadence.graph.placement import runs_here
from cadence.lifecycle.loads import last_load, loads_so_far

__all__ = ["fit_ended", "joined_during_fit", "last_fit_in", "reset_for_fit"]

#: Named for what it reports, not for where this module lives: ``cadence.resets`` is the name
#: the docs give users (docs/how-to/fits.md), kept when the module moved into its wing.
log = logging.getLogger("cadence.resets")


@dataclass(slots=True)
class _Started:
    """A callback that has started a fit: where, and what has been said about it."""

    callback: weakref.ref[Callback]
    learner: weakref.ref[Any]  # of its last fit
    ended: int  # loads_so_far() when that fit ended: a later load came between fits
    warned: bool = False  # about keeping state without a reset()


# id -> its record, for every callback that has started a fit. Keyed by id so that callbacks
# need not be hashable; weak, so that neither the callback nor the learner is kept alive.
_STARTED: dict[int, _Started] = {}


def reset_for_fit(learner: Any) -> None:
    """Called by ``fit`` right before ``FitBegin``: ``reset()`` the callbacks that have started
    a fit before (per their ``reset_when``) and have not been loaded since, and warn about
    those that keep state without a ``reset``."""
    _prepare(learner, learner.callbacks)


def joined_during_fit(learner: Any, callbacks: Iterable[Callback]) -> None:
    """Called by the learner for callbacks that join it while it fits (``add_callback`` from a
    handler), after their ``init``: what ``reset_for_fit`` does for the others at the start."""
    _prepare(learner, callbacks)


def fit_ended(learner: Any) -> None:
    """Called by ``fit`` after ``FitEnd``: loads from now on come between fits."""
    now = loads_so_far()
    for started in _STARTED.values():
        if started.learner() is learner:
            started.ended = now


def _prepare(learner: Any, callbacks: Iterable[Callback]) -> None:
    everyone = list(learner.callbacks)
    labels = {id(cb): label for cb, label in zip(everyone, callback_labels(everyone))}
    for callback in callbacks:
        chain = _chain(callback)
        records = [_record(cb) for cb in chain]
        loaded = any(r is not None and last_load(cb) > r.ended for cb, r in zip(chain, records))
        if any(r is not None for r in records) and not loaded:
            _warn_without_reset(labels.get(id(callback), type(callback).__name__), chain, records)
            elsewhere = any(r is not None and _learner_of(r) is not learner for r in records)
            if (callback.reset_when != "learner" or elsewhere) and runs_here(learner, callback):
                callback.reset()  # a rank-zero callback: on rank 0 alone
        for cb, record in zip(chain, records):
            _start(cb, learner, record)


def last_fit_in(callback: object, learner: Any) -> bool:
    """Whether ``callback``'s last fit was in ``learner``: its next fit there goes on from it
    (``cadence.checkpointing.folder`` lets it save on into its folder)."""
    record = _record(callback)
    return record is not None and _learner_of(record) is learner


def _warn_without_reset(label: str, chain: list[Callback], records: list[_Started | None]) -> None:
    silent = [cb for cb in chain if type(cb).reset is Callback.reset and type(cb).state_dict is not Callback.state_dict]
    if not silent or all(r is not None and r.warned for r in records):
        return
    for record in records:
        if record is not None:
            record.warned = True
    name = type(chain[-1]).__name__
    log.warning(
        "%s starts this fit with the state its previous fit left: it keeps state (state_dict) but "
        "has no reset(), which fit calls before FitBegin of every fit after the first. Implement "
        "%s.reset() to set the state back as __init__ leaves it (and set reset_when = \"learner\" "
        "on the class if its counts should go on across the fits of one learner, and start afresh "
        "only in another), or, to keep the state across fits on purpose, as a method that keeps "
        "it. This is said once per callback.",
        label, name,
    )


def _record(callback: object) -> _Started | None:
    """The record of ``callback``'s last fit, or None before its first."""
    record = _STARTED.get(id(callback))
    return record if record is not None and record.callback() is callback else None


def _learner_of(record: _Started) -> Any:
    """The learner of the record's last fit; once that learner is gone, ``object()``: another
    learner all the same."""
    found = record.learner()
    return object() if found is None else found


def _start(callback: Callback, learner: Any, record: _Started | None) -> None:
    if record is not None:
        record.learner, record.ended = weakref.ref(learner), loads_so_far()
        return
    key = id(callback)
    ref = weakref.ref(callback, lambda _: _STARTED.pop(key, None))
    _STARTED[key] = _Started(ref, weakref.ref(learner), loads_so_far())


def _chain(callback: Callback) -> list[Callback]:
    """``callback``, and what it wraps where it keeps that in ``.callback`` (as ``throttle``
    does): a wrapper answers for the callback inside it."""
    chain = [callback]
    while isinstance(inner := vars(chain[-1]).get("callback"), Callback) and all(inner is not c for c in chain):
        chain.append(inner)
    return chain
