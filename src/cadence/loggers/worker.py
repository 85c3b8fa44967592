"""A worker thread that makes a backend's slow calls (MLflow's) off the training thread, in
order, fed by a bounded queue that never blocks: ``submit`` returns False when the queue is
full, and every wait (``drain``, ``settle``, ``stop``) is bounded."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["Call", "Send", "Worker"]


class Call:
    """``method(client, *args)``, queued for the worker."""

    def __init__(self, method: Callable[..., Any], *args: Any) -> None:
        self.method, self.args = method, args

    def __call__(self, client: Any) -> Any:
        return self.method(client, *self.args)


class Send(Call):
    """``method(client, items, mapping)``, such as metrics and parameters for one MLflow
    ``log_batch``. The worker merges the ones queued back to back into one call (a call costs
    more than its values: about 25 ms per MLflow call on SQLite), so a worker that falls
    behind catches up."""

    def merge(self, later: Send) -> Send:
        (items, mapping), (more, newer) = self.args, later.args
        return Send(self.method, [*items, *more], {**newer, **mapping})  # a key keeps its first value


class Worker:
    """One thread making slow calls in order, fed by a bounded queue that never blocks:
    ``submit`` returns False when the queue is full. The first call returns the client the
    later ones get; the first error stops the rest (but calls submitted with ``always``) and is
    raised on the training thread by the next ``submit`` or ``drain``. Every wait is bounded."""

    def __init__(self, size: int) -> None:
        self.error: BaseException | None = None
        self._queue: queue.Queue[tuple[Callable[[Any], Any], bool] | None] = queue.Queue(maxsize=size)
        self._client: Any = None
        self._unfinished = 0  # calls submitted and not done yet
        self._done = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="cadence-mlflow", daemon=True)
        self._thread.start()

    def submit(self, call: Callable[[Any], Any], *, always: bool = False) -> bool:
        """Queue ``call``; False when the queue is full and it was dropped."""
        if not always:
            self._raise()
        with self._done:
            try:
                self._queue.put_nowait((call, always))
            except queue.Full:
                return False
            self._unfinished += 1
        return True

    def drain(self, timeout: float) -> None:
        """Wait until every call submitted is done, at most ``timeout`` seconds.

        Raises:
            TimeoutError: MLflow did not take them in time.
            Exception: the error a call raised.
        """
        self._raise()
        if not self.settle(timeout):
            raise TimeoutError(f"MLflow did not take the queued writes within {timeout:g} s")
        self._raise()

    def settle(self, timeout: float) -> bool:
        """Whether every call submitted is done (or skipped after an error) within ``timeout``."""
        with self._done:
            return self._done.wait_for(lambda: self._unfinished == 0, timeout)

    def stop(self) -> None:
        """End the thread without waiting for a call that is stuck in MLflow: it ends when
        that call returns, and runs no other."""
        self._stopped = True
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass  # it sees _stopped after its current call
        if self.error is not None or self.settle(0):  # not inside a call: it ends at once
            self._thread.join(timeout=1.0)

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        held: list[tuple[Callable[[Any], Any], bool] | None] = []  # taken from the queue, not run yet
        while True:
            item = held.pop() if held else self._queue.get()
            if item is None or self._stopped:
                return
            call, always = item
            taken = 1
            while isinstance(call, Send):  # merge the sends queued right behind it
                try:
                    following = self._queue.get_nowait()
                except queue.Empty:
                    break
                if following is None or not isinstance(following[0], Send) or following[1]:
                    held.append(following)
                    break
                call, taken = call.merge(following[0]), taken + 1
            try:
                if self.error is None or always:
                    result = call(self._client)
                    if self._client is None:
                        self._client = result
            except BaseException as error:  # reported on the training thread
                if self.error is None:
                    self.error = error
            finally:
                with self._done:
                    self._unfinished -= taken
                    self._done.notify_all()
