"""What the callbacks that watch a metric share (``EarlyStopping``, ``ReduceLROnPlateau``,
``Checkpointer(monitor=...)``): the key and the mode, checked at construction; the key checked
against what ``cbstate.metrics`` will have when the learner is built, and against what it has
when the monitored phase's first epoch ends; and which value is new."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from cadence import MissingStateError
from cadence.phases import Phase

__all__ = ["Monitor", "check_mode"]


def check_mode(owner: str, mode: object) -> str:
    """``mode`` when it is ``"min"`` or ``"max"``, else a ``ValueError`` that says what to write.

    Example:
        >>> check_mode("EarlyStopping", "lowest")
        Traceback (most recent call last):
        ...
        ValueError: EarlyStopping(mode='lowest'): expected "min" (lower is better, as for a loss) or "max" (higher is better, as for accuracy); write e.g. EarlyStopping(mode="min").
    """
    if mode == "min" or mode == "max":
        return str(mode)
    guess = mode.strip().lower()[:3] if isinstance(mode, str) else ""
    raise ValueError(
        f'{owner}(mode={mode!r}): expected "min" (lower is better, as for a loss) or "max" (higher '
        f'is better, as for accuracy); write e.g. {owner}(mode="{guess if guess in ("min", "max") else "min"}").'
    )


class Monitor:
    """A ``cbstate.metrics`` key, ``"<phase>/<metric>"``, that a callback watches.

    Args:
        owner: The callback's class name, for messages.
        key: The key, e.g. ``"valid/loss"``.
        mode: ``"min"`` or ``"max"``.
        fix: The owner's constructor with another key, ``{key}`` where the key goes, e.g.
            ``'EarlyStopping(monitor="{key}")'``; error messages suggest it.

    Raises:
        TypeError, ValueError: ``key`` is not a ``"<phase>/<metric>"`` string, ``mode`` is not
            ``"min"`` or ``"max"``.

    A key that does not exist is refused twice over: when the learner is built, if the producer
    of ``cbstate.metrics`` says which keys it will write (``Metrics`` does), and when the
    monitored phase's first epoch with values ends. Both raise ``MissingStateError``, listing
    the keys there are and the closest one.

    Example:
        >>> monitor = Monitor("EarlyStopping", "valid/acuracy", "max", 'EarlyStopping(monitor="{key}")')
        >>> monitor.phase_name, monitor.improves(0.9, 0.8, 0.0)
        ('valid', True)
    """

    def __init__(self, owner: str, key: object, mode: object, fix: str) -> None:
        if not isinstance(key, str):
            raise TypeError(
                f'{owner}(monitor=...) is a cbstate.metrics key such as "valid/loss"; got {key!r}. '
                f'Write e.g. {fix.format(key="valid/loss")}.'
            )
        phase_name, _, metric = key.partition("/")
        if not (phase_name and metric):
            raise ValueError(
                f'{owner}(monitor={key!r}): keys are "<phase>/<metric>", e.g. {fix.format(key="valid/loss")}.'
            )
        self.owner, self.key, self.phase_name, self.fix = owner, key, phase_name, fix
        self.mode = check_mode(owner, mode)
        self.seen = 0  # values of the key already taken by new_value
        self._found = False  # the key was in cbstate.metrics at an epoch end of its phase

    def improves(self, value: float, best: float, min_delta: float) -> bool:
        """Whether ``value`` is better than ``best`` by more than ``min_delta`` (NaN never is)."""
        return value < best - min_delta if self.mode == "min" else value > best + min_delta

    def watches(self, phase: Phase) -> bool:
        """Whether ``phase`` produces the key (its name is the key's first part)."""
        return phase.name == self.phase_name

    def check_planned(self, cbstate: Any) -> None:
        """When the learner is built (the owner's ``init``): refuse a key that the producer of
        ``cbstate.metrics`` says it will never write.

        Raises:
            MissingStateError: listing the keys it will write, with the closest one.
        """
        keys = getattr(cbstate.metrics, "keys", None) if "metrics" in cbstate else None
        if isinstance(keys, (set, frozenset)) and keys and self.key not in keys:
            raise MissingStateError(self._missing("no callback produces it; cbstate.metrics will have", keys))

    def start(self, metrics: Any) -> None:
        """At ``FitBegin``: values already there are not new."""
        self.seen = len(getattr(metrics, "epochs", {}).get(self.key, ()))

    def check(self, metrics: Any) -> None:
        """At ``EpochEnd`` of the monitored phase: refuse a key that the phase's epoch, having
        written others, did not write. Once the key was found, this costs one test.

        Raises:
            MissingStateError: listing the keys there are, with the closest one.
        """
        if self._found:
            return
        epochs = getattr(metrics, "epochs", {})
        if self.key in epochs:
            self._found = True
        elif any(k.startswith(f"{self.phase_name}/") for k in epochs):  # the phase ran and wrote others
            raise MissingStateError(self._missing(f"the {self.phase_name} epoch ended without it; cbstate.metrics has", epochs))

    def new_value(self, metrics: Any) -> float | None:
        """At ``EpochEnd`` of the monitored phase: ``check``, then the key's value from this
        epoch, or None when the epoch added none (it had no batches)."""
        self.check(metrics)
        values = getattr(metrics, "epochs", {}).get(self.key, ())
        if len(values) <= self.seen:
            return None
        self.seen = len(values)
        return float(values[-1])

    def _missing(self, what: str, keys: Iterable[str]) -> str:
        names = sorted(keys)
        close = difflib.get_close_matches(self.key, names, n=1)
        return (
            f"{self.owner} monitors {self.key!r}, but {what} {', '.join(names)}.\n"
            + (f"Did you mean {self.fix.format(key=close[0])}? " if close else "")
            + f"Monitor one of those keys, or add the metric to Metrics, e.g. "
            f'Metrics(MetricSpec(my_metric, phases="{self.phase_name}")).'
        )
