"""Metrics: the loss and any other metric, per step and per epoch, in ``cbstate.metrics``."""

from __future__ import annotations

import sys
from typing import Any

import torch

from cadence import READ, WRITE, Callback, on
from cadence.callbacks.metric_state import (
    MetricSpec,
    MetricValues,
    Trackers,
    batch_size,
    check_running,
    phase_names,
    tracked_phases,
)
from cadence.distributed.group import current
from cadence.distributed.reduction import across_ranks
from cadence.distributed.sharding import leading, padded_batch
from cadence.events import BatchEnd, EpochBegin, EpochEnd, Event
from cadence.inference import PredictionPhase
from cadence.lr_finder import LRFinderPhase
from cadence.phases import Phase

__all__ = ["MetricSpec", "MetricValues", "Metrics"]


class Metrics(Callback):
    """Tracks the loss and the given metrics per step and per epoch in ``cbstate.metrics``,
    under ``"<phase name>/<name>"`` keys (``"valid/accuracy"``).

    Args:
        *metrics: torchmetrics metrics (any object with ``update``, ``compute``, ``reset``),
            functions ``(y_pred, y) -> scalar tensor``, or ``MetricSpec`` for a custom name or
            a subset of phases. The loss is always tracked, as ``"loss"``.

    Prediction (``learner.predict``) and the LR finder's sweep are not tracked; evaluation
    (``learner.validate``) is, under ``"eval/<name>"`` keys.

    Epoch values: the loss and functions are averaged over the epoch weighted by batch size,
    which is exact for mean-reduced values; a stateful metric's is its ``compute()`` over the
    whole epoch. The batch size is the first dimension of the first tensor found in
    ``batch.y`` (looking into tuples, lists and dicts, so ``(labels, boxes)`` counts labels),
    else in ``batch.y_pred``, else in ``batch.x``; a list of dicts (per-sample records, as
    torchvision's detection targets) counts by its length. Where none holds a tensor with a
    batch dimension, each batch counts as 1: the epoch value is then an unweighted mean. On an accelerator nothing is read back before
    ``EpochEnd`` (no sync per batch); on CPU, where reading costs no sync, sums are floats.
    Step values (``cbstate.metrics.step``): the loss and functions, as device tensors. A
    torchmetrics metric only gets ``update()`` per batch: its per-batch value (``forward``)
    would cost a second update and often a sync, so it has no step value.

    Checkpoints: ``state_dict()`` holds the epoch values and the running state of an epoch
    under way (count, sums, the metrics' accumulated states), so that an epoch resumed in its
    middle ends with the same values as one that ran through. A stateful metric other than a
    torchmetrics ``Metric`` needs ``state_dict()``/``load_state_dict()`` for that.

    Distributed (``cadence.distributed``): every rank accumulates its own batches, with no
    communication per batch; when an epoch ends, one all-reduce adds the counts and sums of
    every rank, and torchmetrics metrics synchronise their states (their own ``sync()``), so
    that every rank gets the values one process computes over all the data (up to the order
    of float additions). The padding of a training shard (a repeated sample at the end of a
    rank's epoch) is left out: that batch's loss and metrics are computed again over its real
    samples (``loss_fn`` is read for that). Step values stay each rank's own. ``state_dict()``
    captures the running totals of every rank (collective: the ``Checkpointer`` calls it on
    every rank), and a resume puts them back on rank 0.

    Example:
        >>> from cadence.testing import make_test_learner
        >>> def mean_error(y_pred, y):
        ...     return (y_pred - y).abs().mean()
        >>> learner = make_test_learner(Metrics(MetricSpec(mean_error, phases="valid")))
        >>> _ = learner.fit(3)
        >>> sorted(learner.cbstate.metrics.epochs)
        ['train/loss', 'valid/loss', 'valid/mean_error']
        >>> learner.cbstate.metrics.last("valid/mean_error") < 0.1
        True
    """

    state_access = {
        "loss_fn": READ,
        "batch.loss": READ,
        "batch.x": READ,
        "batch.y": READ,
        "batch.y_pred": READ,
        "cbstate.metrics": WRITE,
    }
    reset_when = "learner"

    def __init__(self, *metrics: Any) -> None:
        specs = [m if isinstance(m, MetricSpec) else MetricSpec(m) for m in metrics]
        self._specs = [(*spec.resolve(), spec.metric) for spec in specs]
        keys = [f"{p}/{name}" for name, phases, _ in self._specs for p in (phases or phase_names())]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        if twice:
            raise ValueError(
                f"Metrics has more than one metric for {', '.join(twice)}; give one of them "
                f'another name: MetricSpec(metric, name="...").'
            )
        self._trackers = Trackers(self._specs)
        self._values = MetricValues()  # this learner's cbstate.metrics once joined

    def planned_keys(self) -> set[str]:
        """Every key this callback will write, for the phases defined so far (prediction and
        the LR finder's sweep are not tracked)."""
        names = phase_names() - {PredictionPhase.name, LRFinderPhase.name}
        return {f"{p}/loss" for p in names} | {
            f"{p}/{name}" for name, phases, _ in self._specs for p in (tracked_phases(phases) or names)
        }

    def init(self, learner: Any) -> None:
        restored = {k: list(v) for k, v in self._values.epochs.items()}
        if "metrics" not in learner.cbstate:
            learner.cbstate.metrics = MetricValues()
        self._values = learner.cbstate.metrics
        self._values.epochs.update(restored)
        self._values.keys |= self.planned_keys()

    @on(EpochBegin)
    def epoch_begin(self, event: Event, phase: Phase, learner: Any) -> None:
        self._values = learner.cbstate.metrics
        tracker = self._trackers[phase.__class__]
        tracker.count = tracker.batches = 0
        tracker.open, tracker.resumed = True, None
        tracker.padded_at, tracker.padded_keep = padded_batch(event.data) or (sys.maxsize, 0)  # type: ignore[attr-defined]
        for _, metric in tracker.stateful:
            metric.reset()

    @on(BatchEnd)
    def batch_end(self, event: Event, phase: Phase, learner: Any) -> None:
        tracker = self._trackers[phase.__class__]
        batch = learner.batch
        loss = batch.loss
        y = batch.y
        # Tensor.__len__ is slow Python; other targets are rarer and take the slower path.
        size = y.shape[0] if isinstance(y, torch.Tensor) else batch_size(y, batch)
        y_pred = batch.y_pred
        if not tracker.count:
            tracker.start(loss, y_pred)
        tracker.batches += 1
        if tracker.batches == tracker.padded_at:  # a distributed shard's last batch repeats a sample
            size, loss, y_pred, y = _without_padding(tracker.padded_keep, size, y_pred, y, learner.loss_fn)
            if not size:
                return
        if loss.requires_grad:  # a custom phase may hand over an attached loss
            loss = loss.detach()
        tracker.count += size
        if tracker.on_cpu:
            tracker.sums[0] += float(loss) * size
        else:
            tracker.sums[0].add_(loss, alpha=size)
        self._values.step[tracker.loss_key] = loss
        if len(tracker.sums) > 1 or tracker.stateful:
            tracker.update(y_pred, y, size, self._values.step)

    @on(BatchEnd, phase=PredictionPhase)
    @on(BatchEnd, phase=LRFinderPhase)
    def untracked(self, event: Event, phase: Phase, learner: Any) -> None:
        """Predictions are not tracked, and the LR finder's losses are its own: nothing to track."""

    @on(EpochEnd)
    def epoch_end(self, event: Event, phase: Phase, learner: Any) -> None:
        tracker = self._trackers[phase.__class__]
        tracker.open = False
        if tracker.resumed is not None:  # resumed after its last batch
            tracker.start_resumed()
        reduce = across_ranks()
        if tracker.count or reduce:
            epochs = learner.cbstate.metrics.epochs
            for key, value in tracker.values(reduce).items():
                epochs.setdefault(key, []).append(value)

    def __repr__(self) -> str:
        """The metrics by name, with their phases when limited: ``Metrics(accuracy[valid])``."""
        names = [name + (f"[{', '.join(sorted(phases))}]" if phases else "") for name, phases, _ in self._specs]
        return f"Metrics({', '.join(names)})"

    def reset(self) -> None:
        """A fit in another learner starts with no values: the epoch and step values (the new
        learner's: ``init`` gave it a ``MetricValues`` of its own) and any epoch under way are
        forgotten. A second fit of the same learner appends to its epoch values."""
        self._values.epochs.clear()
        self._values.step.clear()
        for tracker in self._trackers.values():
            tracker.open, tracker.resumed, tracker.count = False, None, 0

    def state_dict(self) -> dict[str, Any]:
        """Every epoch's values, ``{"epochs": {key: [float, ...]}}``, and under ``"running"``,
        per phase name with an epoch under way, its state so far: ``count``, ``sums`` (the
        loss's and functions', floats or CPU tensors), ``metrics`` (each stateful metric's
        accumulated state, as CPU tensors) and ``devices`` (where the sums and the metrics
        were, as strings).

        Raises:
            CheckpointError: mid-epoch, for a stateful metric whose state cannot be saved.
        """
        running = {}
        reduce = across_ranks()
        for tracker in self._trackers.values():
            state = tracker.running_state(reduce)
            if state is not None:
                running[tracker.name] = state
        return {"epochs": {k: list(v) for k, v in self._values.epochs.items()}, "running": running}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned (before or after joining a learner).

        A running state is restored into its phase's epoch under way (a resume in the middle of
        an epoch restores after that epoch's ``EpochBegin``) and moved to the device at its next
        batch; with no epoch of that phase under way (a resume at an epoch boundary) it is
        dropped, and the next ``EpochBegin`` starts afresh.

        Raises:
            ValueError: a running state of other metrics than this ``Metrics`` tracks.
        """
        running = state.get("running", {})
        for name, saved in running.items():
            check_running(str(name), saved, self._specs)
        self._values.epochs.clear()
        self._values.epochs.update({str(k): [float(x) for x in v] for k, v in state["epochs"].items()})
        context = current()
        for tracker in self._trackers.values():
            if tracker.open and tracker.name in running:
                saved = running[tracker.name]
                if context is not None and context.rank != 0:  # rank 0 holds every rank's totals
                    saved = {**saved, "count": 0, "sums": {k: 0.0 for k in saved["sums"]}, "metrics": {}}
                tracker.resumed = saved


def _without_padding(keep: int, size: int, y_pred: Any, y: Any, loss_fn: Any) -> tuple[int, Any, Any, Any]:
    """The batch's real samples (its first ``keep``) and their loss, computed again."""
    if keep <= 0:
        return 0, None, y_pred, y
    y_pred, y = leading(y_pred, keep, size), leading(y, keep, size)
    with torch.no_grad():
        loss = loss_fn(y_pred, y)
    return keep, loss, y_pred, y
