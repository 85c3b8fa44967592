"""The backend protocol: what a logger writes to, its life in a fit, and its failures.

A backend is not a callback: the logger callbacks (``LogMetrics``, ``LogHyperparams``,
``LogHistograms``, ``LogConfig``) write to it, and several may share one. Its life in a fit:

1. ``attach(owner, run, begin)`` at ``FitBegin``, by each callback that writes to it. A fresh
   fit (no ``resume=``) is refused when the log already holds an earlier run's values: a log
   belongs to one run, as a checkpoint folder does.
2. ``write(values, step=..., epoch=..., phase=...)``. The first write opens it. A resumed
   run's position is restored only after ``FitBegin`` (or after the resumed epoch's
   ``EpochBegin``), so writes made at ``FitBegin`` pass ``step=None``: they wait for the first
   write with a step (or the next flush) and are then written at the step the fit continues
   from.
3. ``flush()`` at every epoch end, and in ``state_dict()``: a checkpoint taken after a write
   finds it on disk, so that a killed run loses nothing its checkpoint counts as done. A
   flush with nothing written since the last one costs nothing.
4. ``detach(owner)`` at ``FitEnd``; the last owner's detach flushes and closes it.

A second fit of the same learner appends to the log, on the step axis the learner continues.
A callback reused in another learner ``reset()``s its backends: that fit is another run, whose
fresh log is refused where an earlier run's values are, as a fresh fit's is. A log is written
through one backend instance: two instances of one kind on one file, folder or MLflow run
(``log_key``) are refused at ``FitBegin`` (``cadence.loggers.logger``).

Resuming: ``state_dict()`` holds the last step and how far the log goes (the backend's
``_position()`` after its last good flush); after ``load_state_dict`` the backend reopens at
that point and drops what a killed run wrote after its checkpoint, so every step is in the log
once. A fit with ``resume=`` that finds no checkpoint starts the log over.

Failures (a full disk, a permission error, an MLflow server that is gone) are logged once as a
warning, the backend stops for the rest of the fit and training goes on; what it wrote before
stays: a checkpoint taken after the failure records the position of its last good flush. With
``strict=True`` the failure raises ``LoggerError`` instead. Either way the backend's files and
threads are released at ``FitEnd``.
"""

from __future__ import annotations

import abc
import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from cadence.errors import LoggerError
from cadence.events import FitBegin
from cadence.loggers.run import Run
from cadence.loggers.values import Loggable, check_loggables

__all__ = ["Backend"]

log = logging.getLogger(__name__)


class Backend(abc.ABC):
    """Base class of logger backends (see the module docstring for their life in a fit).

    Args:
        location: Where the backend writes (a folder, a file or a URI, by backend); None
            for its default place in the run folder (a ``RunFolder`` callback is then needed).
        strict: Raise ``LoggerError`` when the backend fails, instead of warning once and
            going on without it.

    Extending:
        1. Subclass ``Backend``; set ``default_name``, its file or folder in the run folder.
        2. Implement ``_open(target, resume)``: start writing to ``target`` (the location, or
           ``run.path / default_name``). ``resume`` is None for a fresh log, else what
           ``_position()`` returned when the run's checkpoint was taken (``{}``: nothing is
           kept): drop everything this log wrote after it, and touch nothing else.
        3. Implement ``_write(step, epoch, phase, values)``, taking the values it can show
           (they are checked when built, so a failure here is the backend's own).
        4. Implement ``_flush()`` (after it, everything written is durable), ``_close()``
           (release files and threads, also after a failure), and ``_position()`` (plain
           data: how far the log goes; called right after ``_flush()``).
        5. Optionally implement ``_earlier(target)``: what an earlier run left there that a
           fresh log would replace (a fresh fit is then refused), or None.
        Every call is made under the backend's lock, on one thread at a time.
    """

    default_name: ClassVar[str] = ""
    #: What two instances on one log do to it, for the message that refuses them.
    shared_harm: ClassVar[str] = "each would write it as a log of its own"

    def __init__(self, location: Any = None, *, strict: bool = False) -> None:
        if not isinstance(strict, bool):
            raise TypeError(f"{type(self).__name__}(strict=...) expects True or False; got {strict!r}.")
        self.location = location
        self.strict = strict
        self._lock = threading.RLock()
        self._owners: set[int] = set()
        self._run: Run | None = None
        self._is_open = False
        self._failed = False
        self._dirty = False  # written since the last flush
        self._pending: list[tuple[tuple[Loggable, ...], int, str | None]] = []
        self._step = 0
        self._resume: dict[str, Any] | None = None  # where the next open continues; None: a fresh log
        self._kept: dict[str, Any] | None = None  # the position of the last good flush

    # ---- what subclasses implement -----------------------------------------------------------

    @abc.abstractmethod
    def _open(self, target: Any, resume: dict[str, Any] | None) -> None: ...

    @abc.abstractmethod
    def _write(self, step: int, epoch: int, phase: str | None, values: Sequence[Loggable]) -> None: ...

    @abc.abstractmethod
    def _flush(self) -> None: ...

    @abc.abstractmethod
    def _close(self) -> None: ...

    @abc.abstractmethod
    def _position(self) -> dict[str, Any]: ...

    def _earlier(self, target: Any) -> str | None:
        """What an earlier run left at ``target`` that a fresh log would replace, such as
        ``"rows of an earlier run"``; None when there is nothing (the default)."""
        return None

    # ---- what the logger callbacks call ------------------------------------------------------

    @property
    def needs_run(self) -> bool:
        """Whether the backend writes into the run folder (no location of its own)."""
        return self.location is None

    @property
    def step(self) -> int:
        """The highest step written so far (restored by ``load_state_dict``)."""
        return self._step

    def log_key(self, run: Run | None) -> tuple[str, ...] | None:
        """What identifies the log this backend writes in ``run``: two backends with one key
        write one log. None: no place yet (no location and no run folder)."""
        if self.location is not None:
            target = self.location
        elif run is not None:
            target = run.path / self.default_name
        else:
            return None
        return (type(self).__name__, self._where(target))

    def _where(self, target: Any) -> str:
        """``target`` as a key: a path resolved (``log_key``)."""
        return str(Path(target).resolve())

    def reset(self) -> None:
        """Forget the log this backend went on with: its next fit starts another run's log,
        refused where an earlier run's values are (``LoggerCallback.reset``: the callback is
        reused in another learner). Nothing happens while a fit writes to it."""
        with self._lock:
            if self._owners or self._is_open:
                return
            self._resume = self._kept = None
            self._step = 0

    def attach(self, owner: object, run: Run | None, begin: FitBegin | None = None) -> None:
        """``owner`` (a callback) writes to this backend in the fit that ``begin`` begins.

        Raises:
            LoggerError: a fresh fit (``begin.resume`` is None) into a log that holds an
                earlier run's values; the message says how to continue or start over.
        """
        with self._lock:
            if not self._owners:
                self._failed = False  # a new fit tries again
                self._run = run
                if begin is not None and self._resume is None and not self._is_open:
                    self._begin(begin)  # this backend has not written in this process yet
            self._owners.add(id(owner))

    def write(self, values: Sequence[Loggable], *, step: int | None, epoch: int, phase: str | None) -> None:
        """Write ``values`` at ``step`` (None: at the step the fit continues from; see the
        module docstring), in training epoch ``epoch`` (from 1), for ``phase`` (``"train"``,
        ``"valid"``, or None for the whole run).

        Raises:
            TypeError: a value that is not one of ``cadence.loggers``' loggable values.
        """
        check_loggables(values)
        with self._lock:
            if self._failed:
                return
            if step is None and not self._is_open:
                self._pending.append((tuple(values), epoch, phase))
                return
            if not self._is_open and not self._open_now():
                return
            if self._guard("write", self._write, self._step if step is None else step, epoch, phase, values):
                self._dirty = True
                if step is not None and step > self._step:
                    self._step = step

    def flush(self) -> None:
        """Make everything written so far durable; nothing to do when nothing was written."""
        with self._lock:
            if self._failed:
                return
            if self._pending and not self._is_open and not self._open_now():
                return
            if self._is_open and self._dirty and self._guard("flush", self._flush):
                if self._guard("flush", self._keep_position):
                    self._dirty = False

    def detach(self, owner: object) -> None:
        """``owner``'s fit ended; the last owner's detach flushes and closes the backend."""
        with self._lock:
            if id(owner) not in self._owners:
                return
            self._owners.discard(id(owner))
            if not self._owners:
                self.close()

    def close(self) -> None:
        """Flush and close now, releasing files and threads even when the flush fails; a
        later write reopens and appends after the last good flush."""
        with self._lock:
            try:
                self.flush()
            finally:
                self._pending.clear()
                if self._is_open:
                    self._is_open = False
                    self._dirty = False
                    self._resume = self._kept  # the next fit of this learner appends
                    self._release()

    def state_dict(self) -> dict[str, Any]:
        """``{"step": ..., "position": ...}``: flushed first, so that it never counts what is
        not on disk yet; after a failure, the position of the last good flush."""
        with self._lock:
            self.flush()
            position = self._kept if self._kept is not None else self._resume
            return {"step": self._step, "position": dict(position or {})}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from what ``state_dict`` returned: the next write reopens the log there."""
        with self._lock:
            if self._is_open:  # opened before the restore: start again from the checkpoint
                self._is_open = self._dirty = False
                self._release()
            self._step = int(state["step"])
            self._resume = dict(state["position"])
            self._kept = dict(self._resume)

    def describe(self) -> str:
        """The backend and where it writes, for messages."""
        where = self.location if self.location is not None else self._default_target()
        return f"{type(self).__name__}({str(where)!r})"

    # ---- internals ---------------------------------------------------------------------------

    def _default_target(self) -> Path | str:
        if self._run is None:
            return f"<run folder>/{self.default_name}"
        return self._run.path / self.default_name

    def _target(self) -> Any:
        if self.location is not None:
            return self.location
        if self._run is None:
            raise LoggerError(
                f"{type(self).__name__} has no location and no run folder to write in. Add "
                f"RunFolder() to the callbacks, or give it a place, e.g. {type(self).__name__}(\"logs\")."
            )
        return self._run.path / self.default_name

    def _begin(self, begin: FitBegin) -> None:
        if begin.resume is not None:
            self._resume = self._kept = {}  # start over, unless a checkpoint's position is restored
            return
        target = self._target()
        try:
            found = self._earlier(target)
        except OSError:
            return  # unreadable: opening it fails too, and reports that
        if found is not None:
            raise LoggerError(_refusal(self, found, begin.n_epochs))

    def _open_now(self) -> bool:
        resume = self._resume
        target = self._target()  # no place to write is a usage error, not a failure
        if not self._guard("open", self._open, target, resume):
            return False
        self._is_open = self._dirty = True
        self._kept = dict(resume or {})
        pending, self._pending = self._pending, []
        for values, epoch, phase in pending:
            if not self._guard("write", self._write, self._step, epoch, phase, values):
                break
        return True

    def _keep_position(self) -> None:
        self._kept = self._position()

    def _release(self) -> None:
        if not self._failed:
            self._guard("close", self._close)
            return
        try:  # the failure was reported already
            self._close()
        except Exception:
            log.debug("%s: closing after a failure failed too.", self.describe(), exc_info=True)

    def _guard(self, action: str, call: Callable[..., Any], *args: Any) -> bool:
        try:
            call(*args)
        except Exception as error:
            self._fail(action, error)
            return False
        return True

    def _fail(self, action: str, error: Exception) -> None:
        self._failed = True  # first: with strict=True too, nothing more is tried in this fit
        what = f"{self.describe()} could not {action}: {type(error).__name__}: {str(error).rstrip('.')}"
        if self.strict:
            raise LoggerError(f"{what}. (strict=True; without it, training goes on without this logger.)") from error
        log.warning(
            "%s. Logging to it stops for the rest of this fit; training goes on, and what it wrote "
            "before is kept. Pass strict=True to make this an error.", what,
        )

    def __repr__(self) -> str:
        return self.describe()


def _refusal(backend: Backend, found: str, n_epochs: int) -> str:
    """The message that refuses a fresh fit into a log with an earlier run's values."""
    kind = type(backend).__name__
    if backend.location is None and backend._run is not None:
        folder = backend._run.path
        own = f'give this run a name of its own: RunFolder("{folder.name}-2")'
        aside = f"the old run folder aside: os.rename({str(folder)!r}, {str(folder) + '-previous'!r})"
    else:
        where = Path(str(backend.location))
        other = where.with_name(f"{where.stem}-2{where.suffix}")
        own = f"give this run a place of its own: {kind}({str(other)!r})"
        aside = f"it aside: os.rename({str(where)!r}, {str(where.with_name(f'{where.stem}-previous{where.suffix}'))!r})"
    return (
        f"{backend.describe()} holds {found}, and this fit starts a new run (no resume=), which "
        f"would replace them. A log belongs to one run, as a checkpoint folder does. Either "
        f"continue that run from its checkpoint: fit({n_epochs}, resume=\"latest\") (with a "
        f"Checkpointer); or {own}; or start over after moving {aside}."
    )
