"""What the callbacks that watch a metric share (``EarlyStopping``, ``ReduceLROnPlateau``,
``Checkpointer(monitor=...)``): the key, the mode and the counts, checked at construction; the
key checked against what ``cbstate.metrics`` will have when the learner is built, and against
what it has once the first epoch of a fit has ended; and which value is new."""

from __future__ import annotations

import difflib
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from cadence import MissingStateError
from cadence.callbacks.metric_state import phase_names
from cadence.phases import Phase, TrainingPhase, ValidationPhase

__all__ = ["Monitor", "check_count", "check_mode"]


def check_count(owner: str, name: str, value: object, example: int) -> int:
    """``value`` when it is an int >= 0 (a number of epochs), else a ``ValueError`` that says
    what to write.

    Example:
        >>> check_count("EarlyStopping", "patience", -1, 3)
        Traceback (most recent call last):
        ...
        ValueError: EarlyStopping(patience=-1): use an int >= 0, e.g. patience=3.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{owner}({name}={value!r}): use an int >= 0, e.g. {name}={example}.")
    return value


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
    of ``cbstate.metrics`` says which keys it will write (``Metrics`` does), and once every
    phase of the first epoch of a fit has ended (``check_epoch``; at the monitored phase's
    ``EpochEnd`` already when that phase wrote other keys). Both raise ``MissingStateError``,
    listing the keys there are and the closest one. A key of a phase that the fit does not
    run (``"valid/..."`` without validation data) is not an error: there is nothing to judge.

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
        self._found = False  # the key was in cbstate.metrics when an epoch ended, in this fit
        self._ran: tuple[str, ...] = ()  # the phases the fit runs, from start(); () outside fit
        self._began = 0  # training epochs begun in this fit

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

    def start(self, metrics: Any, data: tuple[Any, Any] | None = None) -> None:
        """At ``FitBegin``: values already there are not new; ``data``, the event's ``(train,
        valid)``, says which phases the fit runs."""
        self.seen = len(getattr(metrics, "epochs", {}).get(self.key, ()))
        self._found, self._began = False, 0
        self._ran = () if data is None else (TrainingPhase.name,) + ((ValidationPhase.name,) if data[1] is not None else ())

    def epoch_ended(self, phase: Phase, metrics: Any) -> None:
        """At ``EpochEnd`` of every phase: once the fit's epoch is over (its last phase ended),
        ``check_epoch``."""
        if self._ran and phase.name == self._ran[-1]:
            self.check_epoch(metrics, self._ran)

    def training_began(self, metrics: Any) -> None:
        """At training ``EpochBegin``, for an owner that does not handle ``EpochEnd``: from the
        second of a fit on, when every phase of an epoch has ended, ``check_epoch``."""
        if self._ran and self._began:
            self.check_epoch(metrics, self._ran)
        self._began += 1

    def check(self, metrics: Any) -> None:
        """At ``EpochEnd`` of the monitored phase: refuse a key that the phase's epoch, having
        written others, did not write. Once the key was found, this costs one test.

        Raises:
            MissingStateError: listing the keys there are, with the closest one.
        """
        epochs = self._not_found(metrics)
        if epochs is not None and any(k.startswith(f"{self.phase_name}/") for k in epochs):  # the phase wrote others
            raise self._ended_without(epochs)

    def check_epoch(self, metrics: Any, ran: Collection[str]) -> None:
        """Once every phase of a fit's epoch has ended (``ran`` names them): refuse a key that
        is not in ``cbstate.metrics`` although its phase ran, or whose phase does not exist.
        Once the key was found, this costs one test.

        Raises:
            MissingStateError: listing the keys there are, with the closest one.
        """
        epochs = self._not_found(metrics)
        if epochs is None:
            return
        if self.phase_name in ran:
            raise self._ended_without(epochs)
        if self.phase_name not in phase_names():
            raise MissingStateError(self._missing(
                f"no phase is named {self.phase_name!r} (fit runs {' and '.join(sorted(ran))}), so nothing "
                f"writes it; after the first epoch cbstate.metrics has", epochs,
            ))

    def _not_found(self, metrics: Any) -> Mapping[str, Any] | None:
        """``cbstate.metrics``' epoch values while the key is not among them, else None (and,
        once it was found, nothing more is looked at)."""
        if self._found:
            return None
        epochs: Mapping[str, Any] = getattr(metrics, "epochs", {})
        if self.key in epochs:
            self._found = True
            return None
        return epochs

    def new_value(self, metrics: Any, *, check: bool = True) -> float | None:
        """The key's value added since the last call (``check`` first, unless told not to), or
        None when there is none (the epoch had no batches, or it was taken)."""
        if check:
            self.check(metrics)
        values = getattr(metrics, "epochs", {}).get(self.key, ())
        if len(values) <= self.seen:
            return None
        self.seen = len(values)
        return float(values[-1])

    def _ended_without(self, epochs: Iterable[str]) -> MissingStateError:
        return MissingStateError(self._missing(f"the {self.phase_name} epoch ended without it; cbstate.metrics has", epochs))

    def _missing(self, what: str, keys: Iterable[str]) -> str:
        names = sorted(keys)
        close = difflib.get_close_matches(self.key, names, n=1)
        # The hint names a phase that exists: the key's, the closest key's, or the closest of fit's.
        phase = self.phase_name
        if phase not in phase_names():
            fits = [TrainingPhase.name, ValidationPhase.name]
            phase = close[0].partition("/")[0] if close else next(iter(difflib.get_close_matches(phase, fits, n=1)), fits[1])
        return (
            f"{self.owner} monitors {self.key!r}, but {what} {', '.join(names) or 'no keys'}.\n"
            + (f"Did you mean {self.fix.format(key=close[0])}? " if close else "")
            + f"Monitor one of those keys, or add the metric to Metrics, e.g. "
            f'Metrics(MetricSpec(my_metric, phases="{phase}")).'
        )
