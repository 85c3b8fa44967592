"""SIGTERM and Ctrl-C in a distributed fit: a request that every rank agrees on, not a stop of
the rank that got the signal.

On one process the fit's own handlers (``cadence.checkpointing.interrupts``) record the signal,
and the ``Checkpointer`` saves and stops at the next consistent point. On several, a rank that
saved alone would leave the others in another collective, so while a fit with a
``Checkpointer`` runs, the first signal becomes a request (``agreement.INTERRUPT``); once the
ranks agree, the fit's ``interrupted`` is set on every rank at the same point, and every rank
saves the same checkpoint and stops. A second signal stops this rank at once.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

from cadence.distributed.agreement import INTERRUPT, Agreement

__all__ = ["AgreedInterrupts"]

log = logging.getLogger(__name__)


class AgreedInterrupts:
    """Takes the place of the fit's own SIGTERM and SIGINT handlers (the fit puts its previous
    handlers back when it ends); ``close`` takes this one's place back."""

    def __init__(self, run: Any, agreement: Agreement) -> None:
        self.agreement = agreement
        self._asked = False
        self._replaced: dict[int, Any] = {}
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread sets handlers, and the fit set none elsewhere
        for signum in (signal.SIGTERM, signal.SIGINT):
            handler = signal.getsignal(signum)
            owner = getattr(handler, "__self__", None)  # the fit's handler: a bound method
            if owner is not None and (owner is run or getattr(owner, "run", None) is run):
                self._replaced[signum] = handler
                signal.signal(signum, self._on_signal)

    def close(self) -> None:
        """Give the fit its handlers back, where they are still this one's."""
        for signum, handler in self._replaced.items():
            if signal.getsignal(signum) == self._on_signal:
                signal.signal(signum, handler)
        self._replaced.clear()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self._asked:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(128 + signum)
        self._asked = True
        log.warning(
            "%s on rank %d: every rank saves a checkpoint and stops once they agree (after the next "
            "training step, or at the end of this epoch); a second signal stops this rank at once.",
            name, self.agreement.context.rank,
        )
        self.agreement.request(INTERRUPT, name, name)
