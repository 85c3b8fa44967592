"""``DataParallel``: the strategy a ``Learner`` trains with across processes, and ``Strategy``,
what a learner asks of one.

The learner calls a strategy at a few points, and nowhere per batch except through the loop it
hands the phases: when it is built (``attach``, ``added_callbacks``, ``localize`` for each
plan, ``runs_init``), when a fit starts (``prepare_fit``, then ``begin_fit`` before
``FitBegin``), for each epoch (``epoch_loop``, then ``epoch_ended``) and when the fit ends
(``end_fit``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from cadence.callback import Callback
from cadence.distributed.agreement import Agreement, Replica, runs_alone
from cadence.distributed.group import (
    Context,
    activate,
    deactivate,
    default_backend,
    gather_json,
    join,
    local_rank,
    rank,
    world_size,
)
from cadence.distributed.interrupts import AgreedInterrupts
from cadence.distributed.loop import AgreedStep, DistributedLoop
from cadence.distributed.plans import check_same_plans, localize
from cadence.distributed.sharding import ShardSampler, batch_size_of, shard
from cadence.errors import DistributedError
from cadence.graph import Plan
from cadence.graph.placement import placement_of
from cadence.phases import Phase, TrainingPhase, ValidationPhase

__all__ = ["DataParallel", "Strategy", "resolve_strategy"]

Data = tuple[Iterable[Any], Iterable[Any] | None]


@runtime_checkable
class Strategy(Protocol):
    """What a ``Learner`` asks of the strategy it trains with (``DataParallel`` is one).

    Extending:
        1. ``attach(learner)`` when the learner is built; ``added_callbacks(callbacks)``: the
           callbacks the strategy needs that the learner lacks.
        2. ``localize(plan)``: the plan as this process runs it; ``runs_init(callback)``:
           whether the callback's ``init`` runs in this process.
        3. ``prepare_fit(learner, train, valid)``: this process's data, when a fit starts
           (before its checkpoints are looked for); ``layout()``: how it shards, for checkpoints
           (None for no distributed layout).
        4. ``begin_fit(learner, run)`` before ``FitBegin``; ``end_fit(error)`` after ``FitEnd``.
        5. ``epoch_loop(learner, phase)``: the object the phase runs on (a ``phases.Loop``);
           ``epoch_ended(phase)`` after the epoch.
    """

    def attach(self, learner: Any) -> None: ...

    def added_callbacks(self, callbacks: list[Callback]) -> list[Callback]: ...

    def localize(self, plan: Plan) -> Plan: ...

    def runs_init(self, callback: Callback) -> bool: ...

    def prepare_fit(self, learner: Any, train: Iterable[Any], valid: Iterable[Any] | None) -> Data: ...

    def layout(self) -> dict[str, Any] | None: ...

    def begin_fit(self, learner: Any, run: Any) -> None: ...

    def epoch_loop(self, learner: Any, phase: Phase) -> Any: ...

    def epoch_ended(self, phase: Phase) -> None: ...

    def end_fit(self, error: BaseException | None) -> None: ...


def resolve_strategy(strategy: object) -> Strategy | None:
    """``Learner(strategy=...)``: ``"auto"`` is ``DataParallel()`` when this process is one of
    several (started by torchrun or ``launch``, or in a process group of more than one), else
    None (plain single-process training); None is never distributed."""
    if isinstance(strategy, str) and strategy == "auto":
        return DataParallel() if world_size() > 1 else None
    if strategy is None or isinstance(strategy, Strategy):
        return strategy
    raise TypeError(
        f"Learner(strategy=...) expects \"auto\" (the default), None or a strategy such as "
        f"DataParallel(); got {strategy!r}."
    )


class DataParallel:
    """Data-parallel training on ``torch.distributed``: one process per device (or per CPU
    process group member), each with a replica of the model under
    ``DistributedDataParallel`` and its shard of the data.

    Start the same script with ``torchrun --nproc-per-node=N train.py`` (any number of nodes),
    or from Python with ``cadence.distributed.launch(main, nprocs=N)``; a ``Learner`` in such a
    process uses ``DataParallel()`` by itself (``strategy="auto"``). Pass it explicitly to set
    its options, or to train with it on one process (the same data order as N processes with
    the same global batch; no process group, no collectives). See ``docs/distributed.md``.

    Args:
        backend: ``"nccl"`` or ``"gloo"``; by default nccl where CUDA is available, else gloo.
        device: Where this process trains; by default its GPU (``cuda:LOCAL_RANK``) under
            nccl, else the CPU.
        seed: The seed of the shuffled order (``seed + epoch``), the same on every rank.
        shard: Give each rank its share of the data (see ``cadence.distributed.sharding``);
            False uses the data as given on each rank (shard it yourself).
        check_every: On an accelerator, how often (in steps) the stop requests agreed in the
            gradient all-reduce are read (each read is a host-device sync).
        find_unused_parameters: Passed to ``DistributedDataParallel``.
        timeout: Seconds a collective may wait for the other ranks before failing.

    Example:
        >>> from cadence.testing import make_test_learner
        >>> learner = make_test_learner(strategy=DataParallel())  # one process: world size 1
        >>> learner.strategy.world_size
        1
        >>> learner.fit(2).stopped is None
        True
    """

    def __init__(
        self,
        *,
        backend: str | None = None,
        device: torch.device | str | None = None,
        seed: int = 0,
        shard: bool = True,
        check_every: int = 32,
        find_unused_parameters: bool = False,
        timeout: float = 1800.0,
    ) -> None:
        if backend is not None and backend not in ("nccl", "gloo"):
            raise ValueError(f'DataParallel(backend={backend!r}): use "nccl" (GPUs), "gloo" (CPUs) or None (chosen for you).')
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"DataParallel(seed={seed!r}): use an int, the same on every rank.")
        if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
            raise ValueError(f"DataParallel(check_every={check_every!r}): use a positive int, e.g. 32.")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"DataParallel(timeout={timeout!r}): use a positive number of seconds, e.g. 600.")
        self.backend = backend
        self.seed, self.shard_data, self.check_every = seed, shard, check_every
        self.find_unused_parameters, self.timeout = find_unused_parameters, float(timeout)
        self._device = None if device is None else torch.device(device)
        self.rank, self.world_size = 0, 1
        self.device = torch.device("cpu")
        self._learner: Any = None
        self._agreement: Agreement | None = None
        self._deciders = False  # some handler's signals are requests
        self._train: Iterable[Any] | None = None
        self._context: Context | None = None
        self._ddp: torch.nn.Module | None = None
        self._run: Any = None
        self._interrupts: AgreedInterrupts | None = None

    # ---- building the learner ----------------------------------------------------------------

    def attach(self, learner: Any) -> None:
        """Join the process group (when there are several processes) and settle this
        process's rank and device."""
        if self._learner is not None and self._learner is not learner:
            raise ValueError("This DataParallel belongs to another Learner; give each Learner its own DataParallel().")
        self._learner = learner
        backend = self.backend or default_backend()
        if world_size() > 1:
            join(backend, self.timeout)
        self.rank, self.world_size = rank(), world_size()
        if self._device is not None:
            self.device = self._device
        elif self.world_size > 1 and dist.get_backend() == "nccl":
            self.device = torch.device("cuda", local_rank())
        elif backend == "nccl" and self.world_size == 1:
            self.device = torch.device("cuda", torch.cuda.current_device())
        if self.world_size > 1:
            context = Context(self.rank, self.world_size, self.device)
            self._agreement = Agreement(context, self.check_every)

    def added_callbacks(self, callbacks: list[Callback]) -> list[Callback]:
        """A ``ToDevice`` for this process's accelerator, unless the callbacks have one."""
        from cadence.callbacks.device import ToDevice  # the built-ins import the learner

        if self.device.type == "cpu" or any(isinstance(cb, ToDevice) for cb in callbacks):
            return []
        return [ToDevice(self.device)]

    def localize(self, plan: Plan) -> Plan:
        if self.world_size == 1:
            return plan
        local = localize(plan, self.rank, self._agreement)
        self._deciders = self._deciders or any(a is not b for a, b in zip(local.calls, plan.calls))
        return local

    def runs_init(self, callback: Callback) -> bool:
        """A rank-zero callback's ``init`` runs on rank zero only."""
        return self.rank == 0 or placement_of(callback) != "rank_zero"

    # ---- a fit ----------------------------------------------------------------------------------

    def prepare_fit(self, learner: Any, train: Iterable[Any], valid: Iterable[Any] | None) -> Data:
        """Before the fit looks for its checkpoints: with several ranks, check that every rank
        built the same plans (before any other collective, so that a difference is an error,
        not a hang) and give every rank the run folder rank 0 chose (``RunFolder``); then this
        rank's share of the fit's data (``cadence.distributed.sharding``)."""
        if self.world_size > 1:
            check_same_plans(learner)
            _share_run_folder(learner, self.rank)
        if self.shard_data:
            train = shard(train, self.rank, self.world_size, training=True, seed=self.seed)
            if valid is not None:
                valid = shard(valid, self.rank, self.world_size, training=False, seed=self.seed)
        self._train = train
        return train, valid

    def layout(self) -> dict[str, Any]:
        """How this fit shards its training data, as checkpoints record it."""
        if not self.shard_data:
            sharding = "none"
        else:
            sampler = getattr(self._train, "sampler", None) if isinstance(self._train, DataLoader) else None
            sharding = "samples" if isinstance(sampler, ShardSampler) else "sampler" if sampler is not None else "batches"
        return {"world_size": self.world_size, "batch_size": batch_size_of(self._train), "sharding": sharding}

    def begin_fit(self, learner: Any, run: Any) -> None:
        """Before ``FitBegin``: put the model on this rank's device and wrap it in DDP."""
        layout = self.layout()
        self._context = Context(self.rank, self.world_size, self.device, layout["batch_size"], layout["sharding"])
        activate(self._context)
        self._run = run
        if self.device.type != "cpu":
            learner.model.to(self.device)
        if self.world_size == 1:
            return
        if isinstance(learner.model, DistributedDataParallel):
            raise DistributedError(
                "Learner(model=...) is already a DistributedDataParallel; DataParallel wraps the model "
                "itself (and learner.model stays your module). Pass the module: Learner(ddp.module, ...), "
                "or keep your own DDP with Learner(..., strategy=None) and shard the data yourself."
            )
        agreement = self._agreement
        assert agreement is not None
        agreement.clear()
        agreement.run = run
        needs_flag = self._deciders or run.checkpointer is not None
        module = Replica(learner.model, agreement, self.device) if needs_flag else learner.model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        self._ddp = DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=self.find_unused_parameters)
        if run.checkpointer is not None:
            self._interrupts = AgreedInterrupts(run, agreement)

    def epoch_loop(self, learner: Any, phase: Phase) -> Any:
        """The loop a phase's epoch runs on: the learner itself on one process; with several,
        DDP's forward (training, ``lr_find``'s sweep) or the plain model (validation, and the
        evaluations and predictions each rank runs alone), and the agreement before each
        optimizer step. A training epoch also sets the sampler's epoch (the shuffle)."""
        if isinstance(phase, TrainingPhase) and self._run is not None:
            sampler = getattr(self._train, "sampler", None)
            if isinstance(sampler, DistributedSampler):
                sampler.set_epoch(self._run.epoch)
        if self.world_size == 1:
            return learner
        if isinstance(phase, ValidationPhase) or runs_alone(phase):
            return DistributedLoop(learner.model, learner, learner.optimizer)
        if self._ddp is None:  # an epoch outside fit
            self._ddp = DistributedDataParallel(learner.model, find_unused_parameters=self.find_unused_parameters)
        agreement = self._agreement
        optimizer = learner.optimizer
        if agreement is not None and agreement.flag is not None:
            optimizer = AgreedStep(optimizer, agreement)
        return DistributedLoop(self._ddp, learner, optimizer)

    def epoch_ended(self, phase: Phase) -> None:
        """After an epoch: agree on the stops requested since the last agreement (not after
        an evaluation or predictions, which each rank runs alone)."""
        if runs_alone(phase):
            return
        if self._agreement is not None and (self._deciders or self._agreement.flag is not None):
            self._agreement.at_epoch_end()

    def end_fit(self, error: BaseException | None) -> None:
        """After ``FitEnd``: release the DDP wrapper; explain a failed collective."""
        if self._context is not None:
            deactivate(self._context)
        self._context = self._run = self._ddp = None
        if self._agreement is not None:
            self._agreement.clear()
            self._agreement.run = None
            self._agreement.flag = None
        if self._interrupts is not None:
            self._interrupts.close()
            self._interrupts = None
        if _collective_failure(error):
            assert error is not None
            error.add_note(
                f"A collective failed on rank {self.rank} of {self.world_size}: another rank most likely "
                f"stopped first, with its own error (cadence.distributed.launch re-raises the first "
                f"rank's error; under torchrun, look for it in that rank's output)."
            )

    def __repr__(self) -> str:
        return f"DataParallel(rank={self.rank}, world_size={self.world_size}, device={str(self.device)!r})"


def _collective_failure(error: BaseException | None) -> bool:
    # gloo reports a peer that went away as a plain RuntimeError from inside DDP's reducer.
    if isinstance(error, dist.DistError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(word in text for word in ("gloo", "NCCL", "c10d", "closed by peer"))


def _share_run_folder(learner: Any, rank: int) -> None:
    # A run folder named by the date and a counter is the next free one: each rank would pick
    # its own. Rank 0 picks (creating it), the others take its name.
    run = learner.cbstate.entries().get("run")
    if run is None or not callable(getattr(run, "adopt", None)):
        return
    name = run.name if rank == 0 else None
    chosen = gather_json(name)[0]
    if rank != 0:
        run.adopt(chosen)
