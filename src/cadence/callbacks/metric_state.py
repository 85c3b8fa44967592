"""What ``Metrics`` computes with: the values it publishes, metric specs, and per-phase trackers
that accumulate on the device and save and restore an epoch under way."""

from __future__ import annotations

import copy
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from cadence.distributed.reduction import check_syncable, sum_across_ranks, synced
from cadence.errors import CheckpointError
from cadence.inference import EvaluationPhase
from cadence.phases import Phase, ValidationPhase

__all__ = ["MetricSpec", "MetricValues", "Trackers", "batch_size", "check_running", "phase_names", "tracked_phases"]


@dataclass(slots=True)
class MetricValues:
    """What ``Metrics`` writes to ``cbstate.metrics``; keys are ``"<phase name>/<metric>"``.

    Attributes:
        step: The latest step's values, as tensors left on their device (no sync per batch);
            call ``float()`` on one when you need the number.
        epochs: Every epoch's value, per key, as floats.
        keys: Every key ``Metrics`` will produce, known when it joins the learner, so that a
            reader can check the key it wants at build time.
    """

    step: dict[str, torch.Tensor] = field(default_factory=dict)
    epochs: dict[str, list[float]] = field(default_factory=dict)
    keys: set[str] = field(default_factory=set)

    def last(self, key: str) -> float:
        """The latest epoch value of ``key``.

        Raises:
            KeyError: naming the keys that exist.
        """
        values = self.epochs.get(key)
        if not values:
            raise KeyError(f"No epoch value for {key!r} yet; known keys: {sorted(self.epochs) or 'none'}.")
        return values[-1]


@dataclass(frozen=True)
class MetricSpec:
    """A metric with its own name or phases, e.g. ``MetricSpec(f1, phases="valid")``.

    Args:
        metric: A stateful metric (``update``/``compute``/``reset``, e.g. a torchmetrics
            ``Metric``) or a function ``(y_pred, y) -> scalar tensor``.
        name: The key's metric part; by default the function's ``__name__`` or the snake-cased
            class name without a ``Binary``/``Multiclass``/``Multilabel`` prefix.
        phases: Phase names (``"train"``, ``"valid"``) or classes; by default every phase.
            ``"valid"`` covers evaluation (``learner.validate``, phase ``"eval"``) too.
    """

    metric: Any
    name: str | None = None
    phases: str | type[Phase] | Iterable[str | type[Phase]] | None = None

    def resolve(self) -> tuple[str, frozenset[str] | None]:
        """Check the spec and return its name and phase names (None: every phase)."""
        metric = self.metric
        if not (callable(metric) or _stateful(metric)):
            raise TypeError(
                f"Metrics expects torchmetrics metrics or functions (y_pred, y) -> tensor; got "
                f"{type(metric).__name__}."
            )
        name = self.name if self.name is not None else _default_name(metric)
        if not name:
            raise ValueError(
                f"Metrics cannot name {getattr(metric, '__qualname__', type(metric).__name__)}: it has "
                f'no usable __name__ (a lambda or a partial). Name it: MetricSpec(metric, name="my_metric").'
            )
        if "/" in name or name == "loss":
            raise ValueError(
                f'Metrics cannot use the name {name!r}: "loss" is always the loss, and names have no '
                f'"/". Name it differently: MetricSpec(metric, name="my_metric").'
            )
        if self.phases is None:
            return name, None
        phases = self.phases
        given = list(phases) if isinstance(phases, Iterable) and not isinstance(phases, str) else [phases]
        bad = [p for p in given if not (isinstance(p, str) or (isinstance(p, type) and issubclass(p, Phase)))]
        if bad:
            raise TypeError(
                f"MetricSpec({name!r}, phases=...) takes phase names or Phase classes, or a list of "
                f"them; got {', '.join(repr(p) for p in bad)}. Write e.g. phases=\"valid\" or "
                f"phases=[\"train\", ValidationPhase]."
            )
        names = frozenset(p if isinstance(p, str) else p.name for p in given)
        unknown = names - phase_names()
        if unknown or not names:
            raise ValueError(
                f"MetricSpec({name!r}, phases=...) names unknown phases {sorted(unknown) or '(none)'}; "
                f"phases are {sorted(phase_names())}, e.g. phases=\"valid\"."
            )
        return name, names


def batch_size(y: Any, batch: Any) -> int:
    """The number of samples in ``batch``, whose targets ``y`` are not a tensor: the first
    dimension of the first tensor in ``y``, else in ``batch.y_pred``, else in ``batch.x``; 1
    where none has one (the epoch mean is then unweighted)."""
    size = _first_dim(y)
    if size is None:
        size = _first_dim(batch.y_pred)
    if size is None:
        size = _first_dim(batch.x)
    return 1 if size is None else size


def _first_dim(value: Any) -> int | None:
    if isinstance(value, torch.Tensor):
        return value.shape[0] if value.ndim else None
    if isinstance(value, (tuple, list)):
        if value and isinstance(value[0], Mapping):
            return len(value)  # per-sample records, as torchvision's detection targets
        items: Iterable[Any] = value
    elif isinstance(value, Mapping):
        items = value.values()
    else:
        return None
    for item in items:
        size = _first_dim(item)
        if size is not None:
            return size
    return None


def phase_names() -> set[str]:
    """The names of every phase class defined so far (``"train"``, ``"valid"``, ...)."""
    names, stack = set(), list(Phase.__subclasses__())
    while stack:
        kind = stack.pop()
        names.add(kind.name)
        stack.extend(kind.__subclasses__())
    return names


def _stateful(metric: object) -> bool:
    return all(callable(getattr(metric, m, None)) for m in ("update", "compute", "reset"))


def _default_name(metric: object) -> str:
    if _stateful(metric):
        cls = re.sub(r"^(Binary|Multiclass|Multilabel)(?=[A-Z0-9])", "", type(metric).__name__)
        return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", cls).lower()
    name = getattr(metric, "__name__", "")
    return name if name.isidentifier() else ""


Specs = list[tuple[str, frozenset[str] | None, Any]]


def tracked_phases(phases: frozenset[str] | None) -> frozenset[str] | None:
    """The phase names a spec's metric is tracked in: evaluation computes the validation
    metrics, so ``"valid"`` brings ``"eval"`` (``learner.validate``) with it."""
    if phases is not None and ValidationPhase.name in phases:
        return phases | {EvaluationPhase.name}
    return phases


def _phase_metrics(name: str, specs: Specs) -> list[tuple[str, Any]]:
    """The ``(key, metric)`` pairs that phase ``name`` tracks, besides the loss."""
    found = []
    for n, phases, m in specs:
        tracked = tracked_phases(phases)
        if tracked is None or name in tracked:
            found.append((f"{name}/{n}", m))
    return found


class _Tracker:
    """One phase's accumulators. On CPU the sums are Python floats (reading a CPU tensor costs
    no sync); elsewhere they are tensors on the loss's device, read once at ``EpochEnd``.

    ``open`` is true from ``EpochBegin`` to ``EpochEnd``; ``resumed`` holds a running state
    restored from a checkpoint (``running_state()``'s format), put back at the next batch by
    ``start`` (which every epoch's first batch runs anyway), so a batch costs nothing more.
    ``batches`` counts the epoch's batches; the one at ``padded_at`` (a distributed shard's
    last, see ``cadence.distributed.sharding``) counts only its first ``padded_keep`` samples.
    """

    __slots__ = (
        "name", "loss_key", "functions", "stateful", "on_cpu", "devices", "sums", "count", "open", "resumed",
        "batches", "padded_at", "padded_keep",
    )

    def __init__(self, kind: type[Phase], specs: Specs) -> None:
        mine = _phase_metrics(kind.name, specs)
        self.name, self.loss_key = kind.name, f"{kind.name}/loss"
        self.functions = [(k, m) for k, m in mine if not _stateful(m)]
        self.stateful = [(k, copy.deepcopy(m)) for k, m in mine if _stateful(m)]
        self.on_cpu = True
        self.devices = ("cpu", "cpu")  # of the sums and of the metrics' states
        self.sums: list[Any] = [0.0] * (1 + len(self.functions))
        self.count = 0
        self.open = False
        self.resumed: dict[str, Any] | None = None
        self.batches = 0
        self.padded_at, self.padded_keep = sys.maxsize, 0

    def start(self, loss: Any, y_pred: Any) -> None:
        """First batch of an epoch (or of a resumed one): choose where to accumulate, put a
        restored running state back there, and move the metrics there."""
        device = loss.device if isinstance(loss, torch.Tensor) else torch.device("cpu")
        self.on_cpu = device.type == "cpu"
        dtype = torch.float32 if device.type == "mps" else torch.float64
        resumed, self.resumed = self.resumed, None
        if resumed is None:
            self.sums = [0.0 if self.on_cpu else torch.zeros((), dtype=dtype, device=device) for _ in self.sums]
        else:
            saved = resumed["sums"]
            self.sums = [
                float(saved[k]) if self.on_cpu else torch.as_tensor(saved[k], dtype=dtype).to(device, copy=True)
                for k in self.keys()
            ]
            self.count = int(resumed["count"])
            self.batches = int(resumed.get("batches", self.batches))
            for key, metric in self.stateful:
                if key in resumed["metrics"]:  # another rank's share of a distributed checkpoint has none
                    _load_metric(metric, resumed["metrics"][key])
        target = y_pred.device if isinstance(y_pred, torch.Tensor) else device
        self.devices = (str(device), str(target))
        for _, metric in self.stateful:
            if callable(getattr(metric, "to", None)):
                metric.to(target)

    def start_resumed(self) -> None:
        """Put back a running state that no batch came to put back (the checkpoint was taken
        after the epoch's last batch), on the devices it was saved from where they exist, so
        that ``compute()`` runs where it would have."""
        assert self.resumed is not None
        device, target = (_available(str(d)) for d in self.resumed.get("devices", ("cpu", "cpu")))
        self.start(torch.empty(0, device=device), torch.empty(0, device=target))

    def keys(self) -> list[str]:
        """The keys of ``sums``, in order: the loss, then the functions."""
        return [self.loss_key, *(k for k, _ in self.functions)]

    def running_state(self, across_ranks: bool = False) -> dict[str, Any] | None:
        """The epoch under way so far, as tensors (on the CPU) and plain data; None outside an
        epoch or before its first batch. ``across_ranks``: the totals over every rank of a
        distributed fit (collective: every rank calls it at the same point)."""
        if self.resumed is not None:
            return self.resumed
        if not (self.open and (self.batches if across_ranks else self.count)):
            return None
        count = self.count
        sums: list[Any] = self.sums if self.on_cpu else [s.detach().to("cpu", copy=True) for s in self.sums]
        if across_ranks:
            count, sums = sum_across_ranks(count, sums)
        with synced([m for _, m in self.stateful] if across_ranks else [], unless_self_syncing=False):
            metrics = {key: _metric_state(key, metric) for key, metric in self.stateful}
        return {
            "count": count,
            "batches": self.batches,
            "devices": list(self.devices),
            "sums": dict(zip(self.keys(), sums)),
            "metrics": metrics,
        }

    def update(self, y_pred: Any, y: Any, size: int, step: dict[str, Any]) -> None:
        if isinstance(y_pred, torch.Tensor):
            y_pred = y_pred.detach()
        for i, (key, fn) in enumerate(self.functions, start=1):
            value = step[key] = fn(y_pred, y)
            if self.on_cpu:
                self.sums[i] += float(value) * size
            else:
                self.sums[i].add_(value, alpha=size)
        for _, metric in self.stateful:
            metric.update(y_pred, y)

    def values(self, across_ranks: bool = False) -> dict[str, float]:
        """The epoch's values; ``across_ranks``: over every rank's samples (collective)."""
        count, sums = self.count, self.sums
        if across_ranks:
            for key, metric in self.stateful:
                check_syncable(key, metric)
            count, sums = sum_across_ranks(count, sums)
        if not count:
            return {}
        found = {k: float(s) / count for k, s in zip(self.keys(), sums)}
        for key, metric in self.stateful:
            with synced([metric] if across_ranks else [], unless_self_syncing=True):
                value = metric.compute()
            if isinstance(value, torch.Tensor) and value.numel() != 1:
                raise ValueError(
                    f"Metrics: {key} computed a tensor of shape {tuple(value.shape)}; cadence keeps "
                    f"one number per metric. Reduce it, e.g. MulticlassAccuracy(num_classes=10, "
                    f'average="macro").'
                )
            found[key] = float(value)
        return found


def _metric_state(key: str, metric: Any) -> dict[str, Any]:
    """A stateful metric's accumulated state, copied to the CPU: a torchmetrics ``Metric``'s
    states (all of them; its ``state_dict()`` holds only the persistent ones) and update
    count, or another metric's own ``state_dict()``."""
    defaults = getattr(metric, "_defaults", None)
    if isinstance(defaults, dict):
        states = {name: _copy(getattr(metric, name), "cpu") for name in defaults}
        return {"states": states, "update_count": int(getattr(metric, "_update_count", 0))}
    if callable(getattr(metric, "state_dict", None)) and callable(getattr(metric, "load_state_dict", None)):
        return {"state_dict": metric.state_dict()}
    raise CheckpointError(
        f"Metrics cannot save the running state of {key} for a checkpoint in the middle of an "
        f"epoch: {type(metric).__name__} is not a torchmetrics Metric and has no state_dict(). "
        f"Give it state_dict() and load_state_dict() methods (tensors and plain data), or save "
        f"checkpoints at epoch ends only: Checkpointer(folder, every_steps=None)."
    )


def _load_metric(metric: Any, saved: dict[str, Any]) -> None:
    if "states" in saved:
        defaults = getattr(metric, "_defaults", {})
        for name, value in saved["states"].items():
            value = _copy(value, None)  # a copy: updates work in place
            if isinstance(defaults.get(name), list) and isinstance(value, torch.Tensor):
                value = [value]  # a list state, concatenated when synchronised across ranks
            setattr(metric, name, value)
        metric._update_count = int(saved["update_count"])
        metric._computed = None  # a cached compute() of the state before
    else:
        metric.load_state_dict(saved["state_dict"])


def _copy(value: Any, device: str | None) -> Any:
    """A copy of a metric state (a tensor or a list of tensors), on ``device`` if given."""
    if isinstance(value, torch.Tensor):
        return value.detach().to(device, copy=True) if device else value.detach().clone()
    if isinstance(value, (list, tuple)):
        return [_copy(v, device) for v in value]
    return value


def _available(name: str) -> torch.device:
    """The device ``name``, or the CPU where this machine has no such device."""
    try:
        return torch.empty(0, device=name).device
    except (RuntimeError, AssertionError):  # not compiled in, no such index, not a device
        return torch.device("cpu")


def check_running(name: str, saved: Any, specs: Specs) -> None:
    """A saved running state of phase ``name`` holds what this ``Metrics`` tracks there."""
    mine = _phase_metrics(name, specs)
    expected = ({f"{name}/loss", *(k for k, m in mine if not _stateful(m))}, {k for k, m in mine if _stateful(m)})
    shape_ok = isinstance(saved, dict) and isinstance(saved.get("count"), int)
    found = (set(saved.get("sums", ())), set(saved.get("metrics", ()))) if shape_ok else (set(), set())
    if not shape_ok or found != expected:
        raise ValueError(
            f"Metrics cannot restore the running state of the {name} epoch under way: the checkpoint "
            f"holds {sorted(found[0] | found[1]) or 'no valid state'}; this Metrics tracks "
            f"{sorted(expected[0] | expected[1])}. Resume with the metrics the checkpoint was taken with."
        )


class Trackers(dict[type[Phase], _Tracker]):
    def __init__(self, specs: Specs) -> None:
        super().__init__()
        self.specs = specs

    def __missing__(self, kind: type[Phase]) -> _Tracker:
        tracker = self[kind] = _Tracker(kind, self.specs)
        return tracker
