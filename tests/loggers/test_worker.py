"""The worker thread behind MLflowLogger: a queue that never blocks, sends merged when they
queue up, bounded waits, and a stop that does not wait for a stuck call."""

from __future__ import annotations

import threading
import time
import pytest

from cadence.loggers.worker import Call, Send, Worker


def test_sends_queued_back_to_back_merge_into_one_call() -> None:
    gate, calls = threading.Event(), []
    worker = Worker(10)
    worker.submit(lambda client: gate.wait(5) and "client")  # the first call's result is the client
    for i in range(3):
        assert worker.submit(Send(lambda client, items, mapping: calls.append((client, items, mapping)), [i], {"k": i}))
    worker.submit(Call(lambda client: calls.append("other")))
    gate.set()
    worker.drain(5)
    assert calls == [("client", [0, 1, 2], {"k": 0}), "other"]  # a key keeps its first value
    worker.stop()
    assert not worker._thread.is_alive()


def test_a_full_queue_drops_and_waits_are_bounded() -> None:
    gate, ran = threading.Event(), []
    worker = Worker(1)
    worker.submit(lambda client: gate.wait(5))  # taken by the thread, which is then stuck
    time.sleep(0.05)
    assert worker.submit(Call(lambda client: ran.append("queued")))
    assert not worker.submit(Call(lambda client: None))  # the queue is full: dropped
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"MLflow did not take the queued writes within 0\.2 s"):
        worker.drain(0.2)
    worker.stop()  # does not wait for the stuck call, and the queue is too full for its marker
    assert time.monotonic() - started < 1.0
    gate.set()  # the stuck call returns: the thread ends, running nothing else
    worker._thread.join(timeout=5)
    assert not worker._thread.is_alive() and ran == []


def test_the_first_error_stops_the_rest_and_is_raised_on_the_next_submit() -> None:
    ran: list[str] = []
    worker = Worker(10)
    worker.submit(lambda client: "client")
    worker.submit(Call(lambda client: (_ for _ in ()).throw(RuntimeError("refused"))))
    worker.submit(Call(lambda client: ran.append("skipped")))
    assert worker.settle(5)
    with pytest.raises(RuntimeError, match="refused"):
        worker.submit(Call(lambda client: None))
    worker.submit(Call(lambda client: ran.append("always")), always=True)
    assert worker.settle(5) and ran == ["always"]
    worker.stop()
    assert not worker._thread.is_alive()
