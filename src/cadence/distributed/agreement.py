"""Stops that every rank takes at the same batch.

A ``CancelFit`` (or a ``CancelEpoch`` in training) decided from replicated state, the same on
every rank, is raised by every rank at the same point: it needs no communication. The state
that is replicated: ``model``, ``optimizer`` and ``loss_fn`` (DDP keeps the parameters equal)
and ``cbstate.metrics.epochs`` (``Metrics`` reduces the epoch values across ranks). A callback
that reads only those (``EarlyStopping``) stops directly.

A callback that reads anything else (``batch``, ``data``, other ``cbstate`` entries), that reads
nothing of the learner (it decides from a clock, a signal, a file) or that runs on rank zero
only decides from rank-local state. Its signal becomes a request: the rest of the event's
handlers run, training goes on, and all ranks act on the requests together at the next point
of agreement:

- after the next training backward pass: the requests ride in DDP's own gradient all-reduce,
  as the gradient of a three-element parameter (``Replica``), so agreeing costs no collective.
  On the CPU the agreed value is read after every backward pass, and the stop happens before
  that step's optimizer step, so every rank ends with the weights of the batch the request
  was made in. On an accelerator it is read every ``check_every`` steps (of the fit), to avoid
  a host-device sync per step: the stop happens before the optimizer step of the next such
  step, up to ``check_every - 1`` steps later;
- at the end of each epoch: one all-reduce of three numbers.

A ``CancelBatch`` from rank-local state in a training phase is refused with an error: that
rank would skip the backward pass the others wait for. A ``CancelFit`` at ``FitBegin`` becomes a
request like any other (on the CPU the first training step's backward pass agrees on it, and
every rank stops before that step's optimizer step: the weights stay as they were); one at ``FitEnd``,
where nothing is left to cancel, is raised as it is, and the fit turns it into the same
``SignalScopeError`` as on one process. Requests still pending when a fit ends (it failed, or
a request came too late to be agreed) are dropped, at its end and at the next one's start, so
that they never stop the next fit.

``validate``, ``predict`` and ``get_preds`` run alone on each rank (``runs_alone``): the plain
model, no agreement, signals raised as in one process.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from cadence.access import AccessSet, Path
from cadence.callback import Callback
from cadence.distributed.group import Context, all_reduce_sum, gather_json
from cadence.errors import CancelBatch, CancelEpoch, CancelFit, DistributedError
from cadence.events import Event, FitEnd
from cadence.graph import HandlerCall
from cadence.graph.placement import placement_of
from cadence.inference import EvaluationPhase, PredictionPhase
from cadence.phases import Phase, ValidationPhase

__all__ = ["REPLICATED", "Agreement", "Replica", "decides_locally", "runs_alone"]

log = logging.getLogger(__name__)

#: State that is the same on every rank at every event of a ``DataParallel`` fit.
REPLICATED: tuple[Path, ...] = (("model",), ("optimizer",), ("loss_fn",), ("cbstate", "metrics", "epochs"))

FIT, EPOCH, INTERRUPT = 0, 1, 2
_KINDS = ("CancelFit", "CancelEpoch", "an interrupt")


def decides_locally(callback: Callback, access: AccessSet) -> bool:
    """Whether ``callback``'s signals may differ between ranks: it runs on rank zero only, reads
    nothing of the learner, or reads state outside ``REPLICATED``.

    Example:
        >>> from cadence import EarlyStopping, StopOnNaNLoss
        >>> from cadence.access import parse_state_access
        >>> [decides_locally(cb, parse_state_access("cb", cb.state_access)) for cb in (EarlyStopping(), StopOnNaNLoss())]
        [False, True]
    """
    if placement_of(callback) == "rank_zero":
        return True
    paths = access.all()
    return not paths or not all(any(p[: len(r)] == r for r in REPLICATED) for p in paths)


def runs_alone(phase: Phase | type[Phase]) -> bool:
    """Whether each rank runs ``phase`` (an instance or a class) by itself, with no collective
    at all: the evaluation and the predictions of ``validate``, ``predict`` and ``get_preds``,
    so that one rank may call them without the others (``if rank() == 0:
    learner.predict(data)``)."""
    kind = phase if isinstance(phase, type) else type(phase)
    return issubclass(kind, (EvaluationPhase, PredictionPhase))


def _has_collectives(phase: Phase) -> bool:
    """Whether a batch of ``phase`` runs DDP's all-reduce (every phase but validation and those
    that run alone; the plain ``Phase`` of ``FitBegin``/``FitEnd`` has no batches)."""
    return type(phase) is not Phase and not isinstance(phase, ValidationPhase) and not runs_alone(phase)


class _Carry(torch.autograd.Function):
    """Identity on the model's output whose backward gives the stop flag this rank's requests
    as its gradient, which DDP then averages with every other gradient."""

    @staticmethod
    def forward(ctx: Any, flag: torch.Tensor, output: torch.Tensor, agreement: Agreement) -> torch.Tensor:
        ctx.agreement = agreement
        return output.view_as(output)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        return ctx.agreement.requests.clone(), grad, None


class Replica(torch.nn.Module):
    """The module DDP wraps: the learner's model, and a three-element ``stop_flag`` that never
    trains (no optimizer holds it) and carries the stop requests through the all-reduce."""

    def __init__(self, module: torch.nn.Module, agreement: Agreement, device: torch.device) -> None:
        super().__init__()
        self.module = module
        self.stop_flag = torch.nn.Parameter(torch.zeros(3, device=device))
        self.agreement = agreement
        agreement.flag = self.stop_flag

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        output = self.module(*args, **kwargs)
        if not torch.is_grad_enabled():
            return output
        carried, found = _attach(output, self.stop_flag, self.agreement)
        if not found:
            raise DistributedError(
                f"{type(self.module).__name__} returned no tensor that requires a gradient "
                f"({type(output).__name__}); DataParallel needs one to agree on stops across "
                f"ranks during the backward pass. Return the prediction as a tensor (or a tuple, "
                f"list or dict whose first tensor is the one the loss uses)."
            )
        return carried


def _attach(value: Any, flag: torch.Tensor, agreement: Agreement) -> tuple[Any, bool]:
    if isinstance(value, torch.Tensor):
        if value.requires_grad:
            return _Carry.apply(flag, value, agreement), True  # type: ignore[no-untyped-call]
        return value, False
    if isinstance(value, (tuple, list)):
        items = list(value)
        for i, item in enumerate(items):
            items[i], found = _attach(item, flag, agreement)
            if found:
                rebuilt = type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
                return rebuilt, True
        return value, False
    if isinstance(value, dict):
        for key, item in value.items():
            carried, found = _attach(item, flag, agreement)
            if found:
                copy = dict(value) if type(value) is dict else value.copy()
                copy[key] = carried
                return copy, True
    return value, False


class Agreement:
    """The pending stop requests of this rank, and the agreements that turn them into stops.

    Args:
        context: The fit's ranks and device.
        check_every: On an accelerator, read the agreed requests every this many steps.
    """

    def __init__(self, context: Context, check_every: int) -> None:
        self.context = context
        self.requests = torch.zeros(3, device=context.device)
        self.flag: torch.nn.Parameter | None = None
        self.run: Any = None  # the fit's FitRun, for interrupts
        self._reasons: dict[int, tuple[str, str]] = {}
        self._every = 1 if context.device.type == "cpu" else check_every
        self._steps = 0
        self._seen: torch.Tensor | None = None  # agreed requests not read yet (accelerators)

    def wrap(self, call: HandlerCall, label: str) -> HandlerCall:
        """``call`` with its signals turned into requests (see the module docstring)."""

        def deferred(event: Event, phase: Phase, learner: Any) -> Any:
            try:
                return call(event, phase, learner)
            except CancelFit as signal:
                if runs_alone(phase) or isinstance(event, FitEnd):
                    raise  # nothing to agree on: it ends this rank's evaluation, or is a scope error
                self.request(FIT, label, signal.reason)
            except CancelEpoch as signal:
                if not _has_collectives(phase):
                    raise
                self.request(EPOCH, label, signal.reason)
            except CancelBatch as signal:
                if not _has_collectives(phase):
                    raise
                raise DistributedError(
                    f"{label} raised CancelBatch in {type(phase).__name__} on rank "
                    f"{self.context.rank} only: it decides from state that differs between ranks "
                    f"(see cadence.distributed.agreement), and a rank that skips a batch leaves the "
                    f"others waiting for its gradients. Decide from replicated state (model, "
                    f"optimizer, cbstate.metrics.epochs) so that every rank skips it, or leave such "
                    f"batches out of the data."
                ) from signal
            return None

        return deferred

    def request(self, kind: int, origin: str, reason: str) -> None:
        """Ask every rank to stop (``kind``: ``FIT``, ``EPOCH`` or ``INTERRUPT``) at the next
        point of agreement."""
        self._reasons.setdefault(kind, (origin, reason))
        self.requests[kind] = 1.0

    def clear(self) -> None:
        """Drop every pending request and every agreed value not read yet: a fit starts or ends."""
        self.requests.zero_()
        self._reasons.clear()
        self._seen = None
        self._steps = 0

    def before_step(self) -> None:
        """After a training backward pass, before the optimizer step: act on the requests that
        rode in the gradient all-reduce."""
        flag = self.flag
        if flag is None or flag.grad is None:
            return
        grad, flag.grad = flag.grad, None
        if self._every == 1:
            self._act(grad.tolist(), training=True)
            return
        if self._seen is None:
            self._seen = torch.zeros_like(grad)
        self._seen += grad
        self._steps += 1
        if self._steps % self._every == 0:
            self._act(self._take_seen(), training=True)

    def at_epoch_end(self) -> None:
        """After a phase's epoch: one all-reduce of this rank's requests."""
        local = self.requests + (self._seen if self._seen is not None else 0)
        self._act(all_reduce_sum(list(local)), training=False)

    def _take_seen(self) -> list[float]:
        assert self._seen is not None
        agreed = self._seen.tolist()
        self._seen.zero_()
        return agreed

    def _act(self, agreed: Sequence[float], *, training: bool) -> None:
        """Raise or record what ``agreed`` (the same on every rank) says was requested."""
        if not any(v > 0 for v in agreed):
            return
        if self._seen is not None:
            self._seen.zero_()
        wanted = [kind for kind in (INTERRUPT, FIT, EPOCH) if agreed[kind] > 0]
        pending = {str(k): list(v) for k, v in self._reasons.items() if k in wanted}
        everyone = gather_json(pending)
        for kind in wanted:
            self._reasons.pop(kind, None)
            self.requests[kind] = 0.0
        first = {kind: _first(everyone, kind) for kind in wanted}
        if INTERRUPT in first and self.run is not None and self.run.interrupted is None:
            self.run.interrupted = first[INTERRUPT][1]
        if FIT in first:
            raise _signal(CancelFit, *first[FIT])
        if EPOCH in first and training:
            raise _signal(CancelEpoch, *first[EPOCH])


def _first(everyone: list[dict[str, list[str]]], kind: int) -> tuple[int, str, str]:
    """The lowest rank's request of ``kind``: ``(rank, origin, reason)``."""
    for rank, pending in enumerate(everyone):
        if str(kind) in pending:
            origin, reason = pending[str(kind)]
            return rank, origin, reason
    # Agreed but no rank kept a reason: raised in a backward pass no handler asked for.
    return -1, "a rank", f"{_KINDS[kind]} was requested"


def _signal(kind: type[CancelFit] | type[CancelEpoch], rank: int, origin: str, reason: str) -> CancelFit | CancelEpoch:
    where = f" (on rank {rank}; every rank stopped at this batch)." if rank >= 0 else "."
    signal = kind(f"{reason.rstrip('.')}{where}")
    signal.origin = origin
    log.info("All ranks agreed on %s from %s on rank %d: %s", kind.__name__, origin, rank, reason)
    return signal
