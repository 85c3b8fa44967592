"""``launch``: start a function in several local processes that train together, from a plain
script or a notebook, as ``torchrun --nproc-per-node=N`` starts a script."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import socket
import sys
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any

import torch
import torch.distributed as dist

from cadence.errors import DistributedError

__all__ = ["launch"]


def launch(
    fn: Callable[..., Any],
    *args: Any,
    nprocs: int = 2,
    timeout: float | None = None,
    start_method: str | None = None,
    threads: int | None = None,
) -> list[Any]:
    """Run ``fn(*args)`` in ``nprocs`` processes on this machine, ranks 0 to ``nprocs - 1``,
    with torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` =
    127.0.0.1, a free ``MASTER_PORT``); a ``Learner`` built inside trains with ``DataParallel``.

    Args:
        fn: What each process runs. With the ``"spawn"`` start method it must be importable: a
            module-level function of a file.
        *args: Passed to ``fn`` in every process (picklable).
        nprocs: How many processes.
        timeout: Seconds after which processes still running are stopped and an error raised;
            None waits for as long as they run.
        start_method: ``"spawn"`` (fresh interpreters: the default in scripts) or ``"fork"``
            (the default in notebooks and interactive sessions, where functions defined there
            cannot be imported by a fresh interpreter; CUDA must not be initialised before).
        threads: torch threads per process; by default the cores divided among the processes.

    Returns:
        What ``fn`` returned in each process, by rank (picklable values).

    Raises:
        DistributedError: a process failed (the first to fail is named, with its traceback;
            the others are stopped), died, or ran past ``timeout``.
    """
    if isinstance(nprocs, bool) or not isinstance(nprocs, int) or nprocs < 1:
        raise ValueError(f"launch(..., nprocs={nprocs!r}): use a positive int, e.g. nprocs=2.")
    method = start_method or ("spawn" if hasattr(sys.modules["__main__"], "__file__") else "fork")
    context: Any = multiprocessing.get_context(method)
    port = _free_port()
    per_process = threads or max(1, (os.cpu_count() or 1) // nprocs)
    readers: list[Connection] = []
    processes = []
    try:
        for rank in range(nprocs):
            reader, writer = context.Pipe(duplex=False)
            process = context.Process(
                target=_run, args=(fn, args, rank, nprocs, port, per_process, writer), name=f"cadence-rank-{rank}"
            )
            try:
                process.start()
            except (AttributeError, TypeError, ValueError) as error:  # what pickling a local function raises
                raise DistributedError(
                    f"launch could not start {getattr(fn, '__qualname__', fn)!r} with the {method!r} start "
                    f"method ({type(error).__name__}: {error}). Define it at module level in a file "
                    f"that the processes can import, or pass start_method=\"fork\"."
                ) from None
            writer.close()
            readers.append(reader)
            processes.append(process)
        return _collect(processes, readers, timeout)
    finally:
        _stop(processes)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _run(
    fn: Callable[..., Any], args: tuple[Any, ...], rank: int, nprocs: int, port: int, threads: int, writer: Connection
) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
        WORLD_SIZE=str(nprocs), LOCAL_WORLD_SIZE=str(nprocs), GROUP_RANK="0",
    )
    torch.set_num_threads(threads)
    try:
        result = fn(*args)
        try:
            _send(writer, ("ok", result))
        except Exception as error:  # an unpicklable result
            raise TypeError(f"launch: rank {rank}'s result cannot be sent back ({error}); return picklable values.") from None
    except SystemExit as error:
        if error.code not in (None, 0):
            _send(writer, ("error", f"SystemExit: {error.code}", traceback.format_exc()))
            _leave()
            os._exit(1)
        _send(writer, ("ok", None))
    except BaseException as error:
        first_line = (str(error).strip().splitlines() or [""])[0]
        shown = first_line if len(first_line) <= 300 else first_line[:297] + "..."
        _send(writer, ("error", f"{type(error).__name__}: {shown}", traceback.format_exc()))
        _leave()
        os._exit(1)  # the others are stopped by the parent; no atexit handler waits for them
    _leave()


def _send(writer: Connection, message: tuple[Any, ...]) -> None:
    # The plain pickler copies tensors into the message; multiprocessing's would share them
    # through this process, which is about to end.
    writer.send_bytes(pickle.dumps(message))


def _leave() -> None:
    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # a peer is gone already; this process ends anyway
            pass


def _collect(processes: list[Any], readers: list[Connection], timeout: float | None) -> list[Any]:
    deadline = None if timeout is None else time.monotonic() + timeout
    owner: dict[Any, int] = {}
    for rank, (process, reader) in enumerate(zip(processes, readers)):
        owner[reader] = owner[process.sentinel] = rank
    results: dict[int, Any] = {}
    pending = set(range(len(processes)))
    while pending:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            running = ", ".join(map(str, sorted(pending)))
            raise DistributedError(
                f"launch: rank(s) {running} still running after {timeout:g} s; stopped them. A rank "
                f"that waits forever usually means the ranks ran different collectives (or one is "
                f"stuck); raise the timeout if the work is just long."
            )
        watched = [readers[r] for r in pending] + [processes[r].sentinel for r in pending]
        for ready in wait(watched, timeout=left):
            rank = owner[ready]
            if rank not in pending:
                continue
            message = _receive(readers[rank], processes[rank])
            if message is None:
                continue  # still running: only its pipe woke up
            if message[0] == "ok":
                results[rank] = message[1]
                pending.discard(rank)
            elif message[0] == "died":
                raise DistributedError(
                    f"launch: rank {rank} of {len(processes)} died with exit code {message[1]} before "
                    f"returning (killed, out of memory, or a crash in native code); the other ranks "
                    f"were stopped.{_aftermath(processes, readers, pending - {rank})}"
                )
            else:
                raise DistributedError(
                    f"launch: rank {rank} of {len(processes)} failed with {message[1].rstrip('.')}."
                    f"{_aftermath(processes, readers, pending - {rank})}\nIts traceback:\n{message[2]}"
                )
    return [results[rank] for rank in range(len(processes))]


def _aftermath(processes: list[Any], readers: list[Connection], others: set[int], grace: float = 5.0) -> str:
    """How the other ranks ended, given ``grace`` seconds to stop by themselves (a rank waiting
    in a collective for the failed one gets an error from it) before they are stopped."""
    deadline = time.monotonic() + grace
    lines = []
    for rank in sorted(others):
        processes[rank].join(max(deadline - time.monotonic(), 0))
        message = _receive(readers[rank], processes[rank]) if not processes[rank].is_alive() else None
        if message is None:
            lines.append(f"rank {rank} was stopped")
        elif message[0] == "error":
            lines.append(f"rank {rank} then failed too, with {message[1].rstrip('.')}")
        elif message[0] == "died":
            lines.append(f"rank {rank} then exited with code {message[1]}")
        else:
            lines.append(f"rank {rank} had finished")
    return f" After it, {'; '.join(lines)}." if lines else ""


def _receive(reader: Connection, process: Any) -> tuple[Any, ...] | None:
    """The message of a process whose pipe or sentinel is ready: what it sent, ``("died",
    exit code)`` when it ended without sending, or None while it still runs."""
    if reader.poll():
        try:
            return tuple(pickle.loads(reader.recv_bytes()))  # from this launch's own processes
        except EOFError:
            pass
    process.join(1)
    if process.exitcode is None:
        return None
    return ("died", process.exitcode)


def _stop(processes: list[Any]) -> None:
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(5)
        if process.is_alive():
            process.kill()
            process.join()
