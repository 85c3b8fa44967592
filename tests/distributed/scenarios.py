"""Training runs for the distributed tests. Each runs the same way in one process (world size 1,
in the test process) and in every rank of a group started by ``launch``, so that a test
compares the two. One group runs many of them (``run_all``), to start processes only once.

Everything returned is plain data or CPU tensors (sent back to the test process).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.regression import MeanAbsoluteError

from cadence import READ, Callback, CancelEpoch, CancelFit, Checkpointer, Learner, Metrics, MetricSpec, Recorder, on
from cadence.checkpoint import list_checkpoints, load_checkpoint
from cadence.distributed import DataParallel, rank
from cadence.errors import CheckpointError, DistributedError
from cadence.events import BatchBegin, BatchEnd, EpochEnd, Event, FitBegin, FitEnd
from cadence.phases import Phase, TrainingPhase, ValidationPhase

TIMEOUT = 60.0  # seconds a collective waits: a hang fails the test instead of stalling it
BACKEND: str | None = "gloo"  # CPUs, also where CUDA is available; the GPU test sets None (nccl)


def dataset(n: int, seed: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=generator)
    return TensorDataset(x, x.sum(1, keepdim=True) + 0.1 * torch.randn(n, 1, generator=generator))


def loaders(n_train: int, n_valid: int, batch_size: int) -> tuple[DataLoader[Any], DataLoader[Any]]:
    return (
        DataLoader(dataset(n_train, 1), batch_size=batch_size, shuffle=True),
        DataLoader(dataset(n_valid, 2), batch_size=batch_size),
    )


def mean_error(y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (y_pred - y).mean()


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


def make_learner(data: tuple[Any, Any], *callbacks: Callback, defaults: bool = True, **strategy: Any) -> Learner:
    model = make_model()
    return Learner(
        model,
        torch.nn.functional.mse_loss,
        torch.optim.Adam(model.parameters(), lr=0.01),
        data=data,
        callbacks=list(callbacks),
        default_callbacks=defaults,
        strategy=DataParallel(backend=BACKEND, timeout=TIMEOUT, **strategy),
    )


def weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def epochs_of(learner: Learner) -> dict[str, list[float]]:
    return {k: list(v) for k, v in learner.cbstate.metrics.epochs.items()}


@contextlib.contextmanager
def printed() -> Iterator[io.StringIO]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        yield out


class EpochLog(Callback):
    """Appends a line per validation epoch to a file: a rank-zero writer."""

    placement = "rank_zero"
    state_access = {"cbstate.metrics.epochs": READ}

    def __init__(self, path: Path) -> None:
        self.path = path

    @on(EpochEnd, phase=ValidationPhase)
    def write(self, event: Event, phase: Phase, learner: Any) -> None:
        with open(self.path, "a") as file:
            file.write(f"valid/loss {learner.cbstate.metrics.epochs['valid/loss'][-1]:.6f}\n")


# ---- the runs ------------------------------------------------------------------------------


def parity(batch_size: int, folder: str) -> dict[str, Any]:
    """Adam, 4 epochs over 48 shuffled samples (validation: 37, uneven), default callbacks,
    a torchmetrics metric, a function and a rank-zero file writer."""
    log = Path(folder) / "epochs.txt"
    metrics = Metrics(MetricSpec(MeanAbsoluteError(), phases="valid"), mean_error)
    learner = make_learner(loaders(48, 37, batch_size), metrics, EpochLog(log))
    with printed() as out:
        learner.fit(4)
    return {"weights": weights(learner.model), "epochs": epochs_of(learner), "printed": out.getvalue()}


def uneven(batch_size: int) -> dict[str, Any]:
    """Training data that does not divide evenly (37 samples: the shards are padded) and
    validation data that does not either (23 samples: no padding)."""
    metrics = Metrics(MetricSpec(MeanAbsoluteError(), name="mae"), mean_error)
    learner = make_learner(loaders(37, 23, batch_size), metrics, defaults=False)
    learner.fit(2)
    return {"weights": weights(learner.model), "epochs": epochs_of(learner)}


class StopAt(Callback):
    """Raises ``signal`` at training step ``step`` on rank ``on_rank`` alone, from the loss
    (rank-local state)."""

    state_access = {"batch.loss": READ}

    def __init__(self, signal: type[CancelFit] | type[CancelEpoch], step: int, on_rank: int) -> None:
        self.signal, self.step, self.on_rank, self.seen = signal, step, on_rank, 0

    @on(BatchEnd, phase=TrainingPhase)
    def check(self, event: Event, phase: Phase, learner: Any) -> None:
        self.seen += 1
        if self.seen == self.step and rank() == self.on_rank and float(learner.batch.loss) >= 0:
            raise self.signal(f"stop asked on rank {self.on_rank} at step {self.step}")


def stops(batch_size: int, on_rank: int) -> dict[str, Any]:
    """A CancelFit raised on rank ``on_rank`` alone at step 3, and a CancelEpoch at step 2."""
    found: dict[str, Any] = {}
    for name, signal, step in (("fit", CancelFit, 3), ("epoch", CancelEpoch, 2)):
        # Recorder first: the batch that asks is counted in one process too (the handlers after a
        # signal are skipped there; in a distributed fit they run, as on the ranks that did not ask).
        learner = make_learner(loaders(96, 16, batch_size), Recorder(), StopAt(signal, step, on_rank))
        records, logger = _Records(), logging.getLogger("cadence")
        level = logger.level
        logger.addHandler(records)
        logger.setLevel(logging.INFO)
        try:
            with printed():
                learner.fit(2)
        finally:
            logger.removeHandler(records)
            logger.setLevel(level)
        history = learner.cbstate.history
        found[name] = {
            "steps": [history[TrainingPhase()].steps, history[TrainingPhase()].epochs],
            "weights": weights(learner.model),
            "log": records.messages,
        }
    return found


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


class CountCollectives(Callback):
    """Profiles training steps ``first`` to ``last`` and counts the collectives in them."""

    def __init__(self, first: int, last: int) -> None:
        self.first, self.last, self.step = first, last, 0
        self.counts: dict[str, int] = {}
        self._profile: Any = None

    @on(BatchBegin, phase=TrainingPhase)
    def begin(self, event: Event, phase: Phase, learner: Any) -> None:
        self.step += 1
        if self.step == self.first:
            self._profile = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            self._profile.start()

    @on(BatchEnd, phase=TrainingPhase)
    def end(self, event: Event, phase: Phase, learner: Any) -> None:
        if self.step == self.last and self._profile is not None:
            self._profile.stop()
            for item in self._profile.events():
                if item.name.startswith("c10d::"):
                    self.counts[item.name] = self.counts.get(item.name, 0) + 1


def collectives(batch_size: int) -> dict[str, Any]:
    """The collectives of training steps 3 to 6, with the default callbacks (which include
    rank-local deciders: StopOnNaNLoss, the printers) and with replicated ones only."""
    found = {}
    for name, defaults in (("defaults", True), ("replicated only", False)):
        counter = CountCollectives(3, 6)
        learner = make_learner(loaders(128, 16, batch_size), counter, defaults=defaults)
        with printed():
            learner.fit(1)
        found[name] = counter.counts
    return found


def mismatch(batch_size: int) -> str:
    """Rank 0 alone has one more callback: the fit must refuse to start, on every rank."""
    extra = [EpochCounter()] if rank() == 0 else []
    learner = make_learner(loaders(32, 16, batch_size), *extra, defaults=False)
    try:
        learner.fit(1)
    except DistributedError as error:
        return str(error)
    return "no error"


class EpochCounter(Callback):
    @on(EpochEnd)
    def count(self, event: Event, phase: Phase, learner: Any) -> None:
        pass


def checkpoints(batch_size: int, folder: str) -> dict[str, Any]:
    """Three epochs of three steps with a checkpoint every two steps and every epoch; then a
    fresh learner resumed from the one taken in the middle of the second epoch."""
    checkpointer = Checkpointer(folder, every_steps=2, keep_last=20)
    learner = make_learner(loaders(48, 37, batch_size), checkpointer)
    with printed():
        learner.fit(3)
    saved = [p.name for p in list_checkpoints(folder)]
    resumed = make_learner(loaders(48, 37, batch_size), Checkpointer(folder + "-resumed", every_steps=2))
    with printed():
        resumed.fit(3, resume=str(Path(folder) / mid_epoch(saved)))
    return {
        "weights": weights(learner.model),
        "epochs": epochs_of(learner),
        "saved": saved,
        "files": sorted(p.name for p in Path(folder).iterdir()),
        "resumed": {"weights": weights(resumed.model), "epochs": epochs_of(resumed)},
    }


def second_fit(batch_size: int, folder: str) -> dict[str, Any]:
    """Two fits of one learner into one folder: the second saves on into it, on every rank."""
    checkpointer = Checkpointer(folder)
    learner = make_learner(loaders(32, 16, batch_size), checkpointer)
    with printed():
        learner.fit(1)
        learner.fit(2)
    saved = list_checkpoints(folder)
    return {
        "run_id": checkpointer.run_id,
        "runs": sorted({load_checkpoint(p).meta["run"] for p in saved}),
        "saved": [p.name for p in saved],
    }


def mid_epoch(saved: list[str]) -> str:
    """The checkpoint taken after the first step of the second epoch."""
    return next(name for name in saved if "-epoch1-batch1" in name)


def wrapped(batch_size: int) -> str:
    """A model that is already a DistributedDataParallel is refused, on every rank."""
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(3, 1))
    learner = Learner(
        model, torch.nn.functional.mse_loss, data=loaders(32, 16, batch_size), default_callbacks=False,
        strategy=DataParallel(backend=BACKEND, timeout=TIMEOUT),
    )
    try:
        learner.fit(1)
    except DistributedError as error:
        return str(error)
    return "no error"


def run_folder(batch_size: int, folder: str) -> dict[str, Any]:
    """A run folder named by the date (each rank would pick its own), checkpoints in it and a
    CSV log of the metrics: one folder, one log, written by rank 0."""
    from cadence import LogMetrics, RunFolder
    from cadence.loggers import CSVLogger

    learner = make_learner(loaders(32, 16, batch_size), RunFolder(root=folder), Checkpointer(), LogMetrics(CSVLogger()))
    with printed() as out:
        learner.fit(2)
    run = learner.cbstate.run
    return {"name": run.name, "printed": out.getvalue(), "folders": sorted(p.name for p in Path(folder).iterdir())}


def outside_fit(batch_size: int) -> dict[str, Any]:
    """After a fit: an evaluation and predictions on rank 0 alone (they must need no other rank;
    the default callbacks include rank-local deciders), then a learning-rate sweep on every rank
    over rank-local data (rank 1's diverges sooner: every rank must still stop at the same
    batch), then a fit again."""
    learner = make_learner(loaders(32, 16, batch_size))
    found: dict[str, Any] = {}
    with printed():
        learner.fit(1)
        if rank() == 0:
            held_out = loaders(32, 24, batch_size)[1]
            found["validate"] = learner.validate(held_out)["loss"]
            with torch.no_grad():
                x, y = held_out.dataset.tensors  # type: ignore[attr-defined]
                found["expected"] = float(torch.nn.functional.mse_loss(learner.model(x), y))
            found["predict"] = list(learner.predict(held_out).shape)
        train = [(x, y if rank() == 0 else 100 * y) for x, y in loaders(64, 16, batch_size)[0]]
        sweep = learner.lr_find(train, start_lr=1e-3, end_lr=1e5, num_it=40)
        found["sweep"] = {"lrs": sweep.lrs, "losses": sweep.losses, "suggestion": sweep.suggestion}
        learner.fit(2)
    found["weights"] = weights(learner.model)
    return found


class Tally(Callback):
    """A rank-zero callback that keeps state (the training epochs it saw) and records which of
    its methods ran in this process."""

    placement = "rank_zero"

    def __init__(self) -> None:
        self.epochs = 0
        self.calls: list[str] = []

    def init(self, learner: Any) -> None:
        self.calls.append("init")

    @on(EpochEnd, phase=TrainingPhase)
    def count(self, event: Event, phase: Phase, learner: Any) -> None:
        self.epochs += 1

    def reset(self) -> None:
        self.calls.append("reset")
        self.epochs = 0

    def state_dict(self) -> dict[str, Any]:
        self.calls.append("state_dict")
        return {"epochs": self.epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.calls.append("load_state_dict")
        self.epochs = state["epochs"]


def rank_zero_state(batch_size: int, folder: str) -> dict[str, Any]:
    """A rank-zero Tally through two fits of one learner (checkpoints every epoch), then a fresh
    learner resumed from the checkpoint of the first fit's end."""
    tally = Tally()
    learner = make_learner(loaders(32, 16, batch_size), tally, Checkpointer(folder, keep_last=20), defaults=False)
    learner.fit(2)
    saved = list_checkpoints(folder)[-1]
    learner.fit(1)  # a second fit: reset, then one epoch
    resumed_tally = Tally()
    resumed = make_learner(loaders(32, 16, batch_size), resumed_tally, Checkpointer(folder + "-resumed"), defaults=False)
    resumed.fit(3, resume=str(saved))
    return {
        "calls": tally.calls,
        "epochs": tally.epochs,
        "saved": load_checkpoint(saved).state["callbacks"]["Tally"],
        "resumed": {"calls": resumed_tally.calls, "epochs": resumed_tally.epochs},
    }


class AskThenFail(Callback):
    """In the first fit: rank 1 alone asks to stop at the end of step ``step`` (a request, agreed
    at the next backward pass), and every rank fails before that pass, at the next BatchBegin."""

    state_access = {"batch.loss": READ}

    def __init__(self, step: int) -> None:
        self.step, self.fits, self.seen = step, 0, 0

    @on(FitBegin)
    def begin(self, event: Event, phase: Phase, learner: Any) -> None:
        self.fits, self.seen = self.fits + 1, 0

    @on(BatchBegin, phase=TrainingPhase)
    def fail(self, event: Event, phase: Phase, learner: Any) -> None:
        if self.fits == 1 and self.seen == self.step:
            raise RuntimeError("every rank fails before the request is agreed")

    @on(BatchEnd, phase=TrainingPhase)
    def ask(self, event: Event, phase: Phase, learner: Any) -> None:
        self.seen += 1
        if self.fits == 1 and self.seen == self.step and rank() == 1 and float(learner.batch.loss) >= 0:
            raise CancelFit("asked on rank 1 just before the failure")


class StopAtFitEnd(Callback):
    """Raises CancelFit at FitEnd on rank 1 alone, in the fit ``when``."""

    def __init__(self, when: int) -> None:
        self.when, self.fits = when, 0

    @on(FitEnd)
    def end(self, event: Event, phase: Phase, learner: Any) -> None:
        self.fits += 1
        if self.fits == self.when and rank() == 1:
            raise CancelFit("too late to cancel")


def leftover_requests(batch_size: int) -> dict[str, Any]:
    """A fit that fails with rank 1's stop request pending, a fit whose FitEnd raises CancelFit
    on rank 1, then a last fit: neither leftover may stop the fits after them."""
    learner = make_learner(loaders(64, 16, batch_size), AskThenFail(step=2), StopAtFitEnd(when=2))
    found: dict[str, Any] = {}
    history = learner.cbstate.history
    with printed():
        try:
            learner.fit(1)
        except RuntimeError as error:
            found["first"] = str(error).splitlines()[0]
        result = None
        try:
            result = learner.fit(1)
        except Exception as error:
            found["second"] = f"{type(error).__name__}: {error}"
        found["second_stopped"] = None if result is None else result.stopped
        found["second_steps"] = history[TrainingPhase()].steps
        found["third_stopped"] = learner.fit(2).stopped
        found["third_steps"] = history[TrainingPhase()].steps
    return found


def latest_agreed(batch_size: int, folder: str) -> dict[str, Any]:
    """resume="latest" where rank 1's listing of the folder lags behind (it sees only the first
    checkpoint): every rank must resume from the one rank 0 found. Then the errors when rank 0
    finds nothing, and when rank 1 cannot read what rank 0 chose."""
    from cadence.checkpointing import locate

    with printed():
        make_learner(loaders(32, 16, batch_size), Checkpointer(folder, keep_last=5)).fit(2)
    original_latest, original_load = locate.latest_checkpoint, locate.load_checkpoint
    if rank() == 1:
        locate.latest_checkpoint = lambda where, check: load_checkpoint(list_checkpoints(where)[0])  # type: ignore[assignment]
    records, logger = _Records(), logging.getLogger("cadence")
    logger.addHandler(records)
    found: dict[str, Any] = {}
    try:
        resumed = make_learner(loaders(32, 16, batch_size), Checkpointer(folder, keep_last=5))
        with printed():
            resumed.fit(3, resume="latest")
        found["resumed"] = [m.split(",")[0] for m in records.messages if m.startswith("Resumed from")]
        found["steps"] = resumed.cbstate.history[TrainingPhase()].steps
        found["weights"] = weights(resumed.model)
        for name, resume in (("missing", folder + "/no-such-checkpoint.pt"), ("unreadable", "latest")):
            if name == "unreadable" and rank() == 1:
                def unreadable(path: Any) -> Any:
                    raise CheckpointError(f"{Path(path).name} is not readable on this machine")

                locate.load_checkpoint = unreadable  # type: ignore[assignment]
            try:
                with printed():
                    make_learner(loaders(32, 16, batch_size), Checkpointer(folder, keep_last=5)).fit(3, resume=resume)
                found[name] = "no error"
            except CheckpointError as error:
                found[name] = str(error)
    finally:
        logger.removeHandler(records)
        locate.latest_checkpoint, locate.load_checkpoint = original_latest, original_load  # type: ignore[assignment]
    return found


def group_errors(folder: str) -> dict[str, Any]:
    """cadence's own collectives on two ranks: gathers of JSON of different sizes on each rank,
    a checkpoint due at different steps, and one that rank 0 fails to write."""
    from cadence.distributed.group import INLINE_BYTES, Context, activate, deactivate, gather_json
    from cadence.distributed.checkpoints import write_once

    found: dict[str, Any] = {}
    small, large = {"rank": rank()}, {"rank": rank(), "text": "x" * (2 * INLINE_BYTES)}
    found["gathered"] = [gather_json(small), gather_json(large if rank() == 1 else small)]
    context = Context(rank(), 2, torch.device("cpu"))
    activate(context)
    try:
        try:
            write_once(3 + rank(), lambda: Path(folder) / "never.pt")
            found["steps"] = "no error"
        except DistributedError as error:
            found["steps"] = str(error)

        def failing_write() -> Path:
            raise OSError("disk full")

        try:
            write_once(5, failing_write)
            found["write"] = "no error"
        except (OSError, CheckpointError) as error:
            found["write"] = f"{type(error).__name__}: {error}"
    finally:
        deactivate(context)
    return found


def run_all(folder: str) -> dict[str, Any]:
    """Every run above with a per-rank batch of 8, in the ranks of one ``launch`` group."""
    root = Path(folder)
    return {
        "rank": rank(),
        "parity": parity(8, str(root)),
        "uneven": uneven(8),
        "stops": stops(8, on_rank=1),
        "collectives": collectives(8),
        "mismatch": mismatch(8),
        "wrapped": wrapped(8),
        "run_folder": run_folder(8, str(root / "runs")),
        "checkpoints": checkpoints(8, str(root / "checkpoints")),
        "second_fit": second_fit(8, str(root / "second-fit")),
        "outside_fit": outside_fit(8),
        "rank_zero_state": rank_zero_state(8, str(root / "rank-zero-state")),
        "leftover_requests": leftover_requests(8),
        "latest_agreed": latest_agreed(8, str(root / "latest")),
        "group_errors": group_errors(str(root)),
    }


class Boom(Callback):
    """Raises an error on rank 1 at its second training step."""

    state_access = {"batch.loss": READ}

    def __init__(self) -> None:
        self.steps = 0

    @on(BatchEnd, phase=TrainingPhase)
    def boom(self, event: Event, phase: Phase, learner: Any) -> None:
        self.steps += 1
        if rank() == 1 and self.steps == 2:
            raise RuntimeError("boom on rank 1")


def failing() -> None:
    """Rank 1 fails in its second step; rank 0 must not wait for it forever."""
    learner = make_learner(loaders(64, 16, 4), Boom(), defaults=False)
    learner.fit(3)


class Terminate(Callback):
    """Sends this process SIGTERM at training step ``step`` on rank ``on_rank``, as a
    preemption would (a clock is rank-local state: the callback reads nothing)."""

    def __init__(self, step: int, on_rank: int) -> None:
        self.step, self.on_rank, self.seen = step, on_rank, 0

    @on(BatchEnd, phase=TrainingPhase)
    def check(self, event: Event, phase: Phase, learner: Any) -> None:
        self.seen += 1
        if self.seen == self.step and rank() == self.on_rank:
            os.kill(os.getpid(), signal.SIGTERM)


def interrupted_then_failing(folder: str) -> None:
    """SIGTERM reaches rank 1 alone at step 3: every rank must save the same checkpoint and stop
    (``fit`` raises ``SystemExit(143)``, recorded in ``interrupted-rank<RANK>.json``). Then the
    same processes run ``failing``."""
    out = Path(folder)
    learner = make_learner(loaders(96, 16, 8), Recorder(), Terminate(3, on_rank=1), Checkpointer(out / "checkpoints"))
    code = None
    try:
        with printed():
            learner.fit(2)
    except SystemExit as exit:
        code = exit.code
    record = {
        "code": code,
        "steps": learner.cbstate.history[TrainingPhase()].steps,
        "saved": [p.name for p in list_checkpoints(out / "checkpoints")],
    }
    (out / f"interrupted-rank{rank()}.json").write_text(json.dumps(record))
    failing()


def gpu_parity(folder: str, alone: bool = False) -> dict[str, Any]:
    """``parity`` on GPUs with the automatic backend (nccl), weights brought back to the CPU."""
    global BACKEND
    BACKEND = None
    result = parity(16 if alone else 8, folder)
    backend = torch.distributed.get_backend() if torch.distributed.is_initialized() else "none"
    return {"weights": [w.cpu() for w in result["weights"]], "backend": backend}


def dies_on_rank_1() -> None:
    """Rank 1 exits at once with code 3, sending nothing (as a crash would); rank 0 waits."""
    import time

    if rank() == 1:
        os._exit(3)
    time.sleep(20)


def sleeps(seconds: float) -> None:
    import time

    time.sleep(seconds)


def joins_a_group_of_one() -> bool:
    """Joins a process group from launch's environment and returns, leaving it to launch."""
    torch.distributed.init_process_group("gloo")
    return torch.distributed.is_initialized()
