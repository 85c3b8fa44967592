"""throttle: run one of a callback's handlers only every N-th time, or at most every S seconds."""

from __future__ import annotations

import functools
import time
import weakref
from typing import Any, Literal, cast

from cadence import Callback, RunFirst
from cadence.events import Event
from cadence.graph import HandlerCall
from cadence.phases import Phase, TrainingPhase, ValidationPhase

__all__ = ["Throttled", "throttle"]

_clock = time.monotonic


def throttle(
    callback: Callback, event: type[Event], *, every: int | None = None, seconds: float | None = None
) -> Throttled:
    """Wrap ``callback`` so that its handler of ``event`` runs only on every ``every``-th
    firing (the N-th, 2N-th, ...), or at most once per ``seconds`` (the first firing, then the
    first after ``seconds`` have passed). Firings are counted per (event, phase) class pair,
    across epochs and ``fit`` calls. Its other handlers run as before.

    The wrapper is the callback as far as the learner can tell: it declares the same
    ``state_access``, ``run_after``, ``thread_affine`` and ``placement``, answers ``resolve_conflict`` and
    ``init`` through it, passes ``isinstance(throttled, type(callback))`` (so
    ``run_after = (Recorder,)`` elsewhere still orders after a throttled ``Recorder``), and is
    labelled by the callback's type name.
    Its throttled handler shows as e.g. ``Recorder.batch_end[every 2]`` in ``explain()``.

    Args:
        callback: The callback to wrap.
        event: The event class whose handler is throttled (subclasses included).
        every: Run on every ``every``-th firing, a positive int.
        seconds: Run at most once per ``seconds``, a number >= 0. Pass exactly one of the two.

    Raises:
        TypeError: ``callback`` or ``event`` is of the wrong kind.
        ValueError: neither or both of ``every`` and ``seconds``, or an invalid value.

    Example:
        >>> from cadence import Recorder
        >>> from cadence.events import BatchEnd
        >>> from cadence.phases import TrainingPhase
        >>> from cadence.testing import make_test_learner
        >>> learner = make_test_learner(throttle(Recorder(), BatchEnd, every=4), n_batches=16)
        >>> _ = learner.fit(1)
        >>> learner.cbstate.history[TrainingPhase()].steps
        4
        >>> print(learner.explain(BatchEnd, TrainingPhase))
        BatchEnd in TrainingPhase:
          1. Recorder.batch_end[every 4]
    """
    if isinstance(callback, type) or not isinstance(callback, Callback):
        shown = f"the class {callback.__name__}" if isinstance(callback, type) else type(callback).__name__
        raise TypeError(f"throttle(callback, ...) expects a Callback instance, e.g. Recorder(); got {shown}.")
    if isinstance(event, Event):
        raise TypeError(f"throttle(..., event) expects the event class: pass {type(event).__name__}, not an instance.")
    if not (isinstance(event, type) and issubclass(event, Event)):
        raise TypeError(f"throttle(..., event) expects an Event class such as BatchEnd; got {event!r}.")
    if (every is None) == (seconds is None):
        which = "both" if every is not None else "neither"
        raise ValueError(
            f"throttle(...) takes exactly one of every=N (run on every N-th firing) and seconds=S "
            f"(run at most once per S seconds); got {which}."
        )
    if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
        raise ValueError(f"throttle(..., every=N) expects a positive int, e.g. every=10; got {every!r}.")
    if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds >= 0):
        raise ValueError(f"throttle(..., seconds=S) expects a number >= 0, e.g. seconds=30; got {seconds!r}.")
    if not _handles(callback, event):
        handled = sorted({h.event.__name__ for h in callback.handlers}) or ["nothing"]
        raise ValueError(
            f"throttle({callback!r}, {event.__name__}, ...) would change nothing: "
            f"{type(callback).__name__} has no handler for {event.__name__}. It handles "
            f"{', '.join(handled)}; throttle one of those."
        )
    return _wrapper_type(callback.__class__)(callback, event, every, seconds)


class Throttled(Callback):
    """What ``throttle`` returns; see there. The wrapped callback is ``.callback``; other
    attributes are read through to it."""

    def __init__(self, callback: Callback, event: type[Event], every: int | None, seconds: float | None) -> None:
        self.callback = callback
        self.event = event
        self.every = every
        self.seconds = seconds
        self.state_access = callback.state_access
        self.run_after = callback.run_after
        vars(self)["handlers"] = callback.handlers
        self._suffix = f"[every {every}]" if every is not None else f"[every {seconds:g}s]"
        self._counts: dict[tuple[type[Event], type[Phase]], int] = {}
        self._last: dict[tuple[type[Event], type[Phase]], float] = {}
        self._restored: dict[str, int] = {}

    # isinstance(throttled, Recorder) consults __class__ when the type check fails, as for
    # unittest.mock and wrapt proxies; type(throttled) stays the wrapper type.
    @property  # type: ignore[misc]
    def __class__(self) -> type[Any]:
        return self.callback.__class__

    # Read through, so ThreadedExecutor keeps e.g. a throttled MixedPrecision on its thread.
    @property
    def thread_affine(self) -> bool:  # type: ignore[override]
        return bool(getattr(self.callback, "thread_affine", False))

    @property
    def placement(self) -> Any:  # type: ignore[override]
        return getattr(self.callback, "placement", "every_rank")

    def handler_for(self, event: type[Event], phase: type[Phase]) -> str | None:
        name = self.callback.handler_for(event, phase)
        if name is None or not issubclass(event, self.event):
            return name
        # The graph looks the returned name up on the wrapper: keep the gate there, under a
        # name of its own, since the same method may also handle events that are not throttled.
        gated = name + self._suffix
        if gated not in vars(self):
            handler = getattr(self.callback, name)
            vars(self)[gated] = (
                functools.partial(self._every, handler, self.every)
                if self.every is not None
                else functools.partial(self._seconds, handler, cast(float, self.seconds))
            )
        return gated

    def _every(self, handler: HandlerCall, every: int, event: Event, phase: Phase, learner: Any) -> None:
        key = (type(event), type(phase))
        count = self._counts.get(key)
        if count is None:
            count = self._restored.get(_key_name(key), 0)
        self._counts[key] = count = count + 1
        if count % every == 0:
            handler(event, phase, learner)

    def _seconds(self, handler: HandlerCall, seconds: float, event: Event, phase: Phase, learner: Any) -> None:
        key = (type(event), type(phase))
        now = _clock()
        last = self._last.get(key)
        if last is None or now - last >= seconds:
            self._last[key] = now
            handler(event, phase, learner)

    def init(self, learner: Any) -> None:
        self.callback.init(learner)

    def resolve_conflict(self, other: Callback) -> Any:
        answer = self.callback.resolve_conflict(other)
        # The wrapped callback names itself; the learner knows the wrapper.
        if isinstance(answer, RunFirst) and answer.callback is self.callback:
            return RunFirst(self)
        return answer

    @property
    def reset_when(self) -> Literal["fit", "learner"]:  # type: ignore[override]
        return self.callback.reset_when

    def reset(self) -> None:
        """When the wrapped callback is reset: count firings and times afresh, and reset it."""
        self._counts, self._last, self._restored = {}, {}, {}
        self.callback.reset()

    def state_dict(self) -> dict[str, Any]:
        """The wrapped callback's state and the firing counts (times are not kept)."""
        counts = {_key_name(key): n for key, n in self._counts.items()}
        return {"callback": self.callback.state_dict(), "counts": counts}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.callback.load_state_dict(state["callback"])
        # Counts are keyed by class at run time; match them by name when a pair is first met.
        self._counts = {}
        self._restored = dict(state["counts"])

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "callback":
            raise AttributeError(name)
        return getattr(self.callback, name)

    def __repr__(self) -> str:
        rate = f"every={self.every}" if self.every is not None else f"seconds={self.seconds:g}"
        return f"throttle({self.callback!r}, {self.event.__name__}, {rate})"


def _key_name(key: tuple[type[Event], type[Phase]]) -> str:
    return f"{key[0].__qualname__}/{key[1].__qualname__}"


_WRAPPER_TYPES: weakref.WeakKeyDictionary[type[Any], type[Throttled]] = weakref.WeakKeyDictionary()


def _wrapper_type(wrapped: type[Any]) -> type[Throttled]:
    # Named like the wrapped class, so labels and fix hints ("isinstance(other, Recorder)",
    # "Recorder.state_access") name the class the user knows.
    if wrapped not in _WRAPPER_TYPES:
        namespace = {"__qualname__": wrapped.__qualname__}
        _WRAPPER_TYPES[wrapped] = cast(type[Throttled], type(wrapped.__name__, (Throttled,), namespace))
    return _WRAPPER_TYPES[wrapped]


def _handles(callback: Callback, event: type[Event]) -> bool:
    if any(issubclass(h.event, event) or issubclass(event, h.event) for h in callback.handlers):
        return True
    # A callback may pick its handlers in handler_for without registering them.
    return any(callback.handler_for(event, p) for p in (Phase, TrainingPhase, ValidationPhase))
