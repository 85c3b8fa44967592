"""Phases: what the learner is doing, and the step and epoch logic that does it.

A phase is a frozen dataclass: equal instances hash the same, so ``history[TrainingPhase()]``
finds the entry a handler saw. Handlers written for a phase class also run for its subclasses.
Each phase declares the events it fires (``events``); the learner builds one plan per
(event, phase) pair from exactly those.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor

from cadence.batches import BatchAdapter
from cadence.inputs.diagnostics import check_backward, check_loss, note_step_error, warn_no_batches
from cadence.events import (
    BackwardBegin,
    BackwardEnd,
    BatchBegin,
    BatchEnd,
    EpochBegin,
    EpochEnd,
    Event,
    FitBegin,
    FitEnd,
    LossBegin,
)
from cadence.errors import CancelBatch, CancelEpoch, CancelSignal, SignalScopeError
from cadence.state import Batch

__all__ = [
    "Loop",
    "Phase",
    "TrainingPhase",
    "ValidationPhase",
    "evaluate_batch",
    "evaluating",
    "known_batch_fields",
    "phases_firing",
    "scope_error",
    "unpack",
]

# Batch-level events carry no data, so one shared instance of each is fired: no allocation.
BATCH_BEGIN = BatchBegin()
LOSS_BEGIN = LossBegin()
BACKWARD_BEGIN = BackwardBegin()
BACKWARD_END = BackwardEnd()
BATCH_END = BatchEnd()
EPOCH_END = EpochEnd()
_NO_BATCH = object()  # the loop variable of an epoch that drew nothing

_batch_fields: set[str] = {f.name for f in fields(Batch)}


def known_batch_fields() -> frozenset[str]:
    """Return every ``batch.<field>`` name declared by a phase defined so far."""
    return frozenset(_batch_fields)


def phases_firing(event: type[Event], within: type[Phase] | None = None) -> list[type[Phase]]:
    """``within`` (``Phase`` by default) and its subclasses defined so far that list ``event``
    or a subclass of it in their ``events``, base classes first."""
    found: list[type[Phase]] = []
    stack: list[type[Phase]] = [Phase if within is None else within]
    seen: set[type[Phase]] = set()
    while stack:
        kind = stack.pop()
        if kind in seen:
            continue
        seen.add(kind)
        if any(issubclass(fired, event) for fired in kind.events):
            found.append(kind)
        stack.extend(reversed(kind.__subclasses__()))
    return found


def scope_error(signal: CancelSignal, where: str) -> SignalScopeError:
    """The error for ``signal`` raised ``where`` (e.g. ``"at FitEnd"``), which it cannot cancel."""
    return SignalScopeError(
        f"{type(signal).__name__} raised by {signal.origin or 'a handler'} {where}, where it has nothing "
        f"to cancel. CancelBatch works from BatchBegin to BackwardEnd (LossBegin in validation), "
        f"CancelEpoch from EpochBegin to EpochEnd, and CancelFit anywhere but FitEnd."
    )


class Loop(Protocol):
    """What a phase needs from the learner that runs it (``Learner`` implements it)."""

    model: torch.nn.Module
    loss_fn: Callable[..., Any]
    optimizer: torch.optim.Optimizer
    adapter: BatchAdapter

    @property
    def batch(self) -> Batch: ...

    def fire(self, event: Event, phase: Phase) -> None: ...


_PAIRS = BatchAdapter()


def unpack(batch: object) -> tuple[Any, Any]:
    """Split one ``(x, y)`` item of the data, or say what the data should look like (what the
    default ``BatchAdapter`` does; phases call the learner's ``loop.adapter.unpack``)."""
    return _PAIRS.unpack(batch)


@dataclass(frozen=True)
class Phase:
    """Base class of phases. The plain ``Phase()`` is the phase of ``FitBegin``/``FitEnd``.

    Extending:
        1. Subclass a phase as a frozen dataclass and give it a short ``name`` (metric keys are
           ``"<name>/<metric>"``).
        2. List the events it fires in ``events``; if its batches carry more than ``x``, ``y``,
           ``y_pred`` and ``loss``, subclass ``Batch`` and set ``batch_type``.
        3. Implement ``step(loop, batch)``: set the batch fields, call the model, and fire each
           event with ``loop.fire(event, self)``. Going through ``loop.adapter`` (``x, y =
           loop.adapter.unpack(batch)``, ``loop.adapter.forward(loop.model, x)``,
           ``loop.adapter.loss(loop.loss_fn, y_pred, y)``) keeps the learner's batch adapter
           (``cadence.batches``) working in your phase. ``CancelBatch`` raised by a handler
           ends the batch; once there is nothing left to cancel (at ``BatchEnd``), turn it into
           ``scope_error(signal, ...)`` as the built-in phases do. Override ``epoch_context`` for
           per-epoch setup such as ``torch.no_grad()``.
    """

    name: ClassVar[str] = "fit"
    events: ClassVar[tuple[type[Event], ...]] = (FitBegin, FitEnd)
    batch_type: ClassVar[type[Batch]] = Batch

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        kind = cls.batch_type
        # vars(), not is_dataclass alone: a Batch subclass without @dataclass inherits the
        # marker, yet its new fields would be plain class attributes.
        dataclass_batch = isinstance(kind, type) and issubclass(kind, Batch) and is_dataclass(kind)
        if not (dataclass_batch and "__dataclass_fields__" in vars(kind)):
            raise TypeError(
                f"{cls.__name__}.batch_type must be a dataclass subclass of Batch, e.g. "
                f"@dataclass(slots=True) class GanBatch(Batch): fake: Any = None; got {kind!r}."
            )
        _batch_fields.update(f.name for f in fields(kind))

    def epoch_context(self, loop: Loop) -> contextlib.AbstractContextManager[None]:
        """Return the context an epoch of this phase runs in (none by default)."""
        return contextlib.nullcontext()

    def step(self, loop: Loop, batch: object) -> None:
        """Process one batch, firing this phase's batch events."""
        raise NotImplementedError(
            f"{type(self).__name__} does not process batches; run epochs with TrainingPhase(), "
            f"ValidationPhase() or a phase that implements step()."
        )

    def run_step(self, loop: Loop, batch: object) -> None:
        """Run ``step`` (outside an epoch: wrap it in ``epoch_context``); ``CancelBatch`` ends
        the batch here."""
        try:
            self.step(loop, batch)
        except CancelBatch:
            pass
        except Exception as exc:
            note_step_error(exc, self, loop, in_epoch=False)
            raise

    def run_epoch(self, loop: Loop, data: Iterable[Any]) -> None:
        """Run one epoch over ``data``: ``EpochBegin``, every batch, ``EpochEnd``.

        ``CancelEpoch`` skips the rest of the epoch; ``EpochEnd`` still fires. An epoch that
        draws no batch from ``data`` is a ``DataWarning``, after its ``EpochEnd``.
        """
        batch: object = None  # stays None when EpochBegin cancels the epoch
        with self.epoch_context(loop):
            try:
                loop.fire(EpochBegin(data), self)
                step = self.step
                batch = _NO_BATCH
                for batch in data:
                    try:  # run_step, inlined: this loop is the hot path
                        step(loop, batch)
                    except CancelBatch:
                        pass
                    except Exception as exc:
                        note_step_error(exc, self, loop, in_epoch=True)
                        raise
            except CancelEpoch:
                pass
            try:
                loop.fire(EPOCH_END, self)
            except CancelEpoch:
                pass
        if batch is _NO_BATCH:
            warn_no_batches(self, data)


@dataclass(frozen=True)
class TrainingPhase(Phase):
    """One optimisation pass over the training data.

    Events, in order, and the state that exists from each on:

    - ``EpochBegin``: ``EpochBegin.data`` is the data about to be iterated.
    - ``BatchBegin``: ``batch.x``, ``batch.y``.
    - ``LossBegin``: ``batch.y_pred`` (may be rewritten; the rewrite is what the loss sees).
    - ``BackwardBegin``: ``batch.loss`` (may be rewritten; the rewrite is what is backpropagated).
    - ``BackwardEnd``: gradients in the parameters; ``batch.loss`` is now detached.
    - ``BatchEnd``: after ``optimizer.step()``.
    - ``EpochEnd``.

    The batch is unpacked, the model called and the loss computed by the learner's
    ``adapter`` (``cadence.batches``; ``(x, y)``, ``model(x)``, ``loss_fn(y_pred, y)`` by default).
    Gradients are cleared with ``optimizer.zero_grad(set_to_none=True)`` before the forward.
    The model is put in train mode when the epoch starts (a handler may change that at
    ``EpochBegin``, e.g. to keep batch-norm statistics frozen).
    """

    name: ClassVar[str] = "train"
    events: ClassVar[tuple[type[Event], ...]] = (
        EpochBegin,
        BatchBegin,
        LossBegin,
        BackwardBegin,
        BackwardEnd,
        BatchEnd,
        EpochEnd,
    )

    def epoch_context(self, loop: Loop) -> contextlib.AbstractContextManager[None]:
        loop.model.train()
        return contextlib.nullcontext()

    def step(self, loop: Loop, batch: object) -> None:
        state, fire, adapter = loop.batch, loop.fire, loop.adapter
        state.x, state.y = adapter.unpack(batch)
        state.y_pred = state.loss = None
        fire(BATCH_BEGIN, self)
        loop.optimizer.zero_grad(set_to_none=True)
        state.y_pred = adapter.forward(loop.model, state.x)
        fire(LOSS_BEGIN, self)
        state.loss = adapter.loss(loop.loss_fn, state.y_pred, state.y)
        if state.loss.__class__ is not Tensor or state.loss.ndim:  # the full check only then
            check_loss(state.loss, self)
        fire(BACKWARD_BEGIN, self)
        try:
            state.loss.backward()
        except (AttributeError, RuntimeError) as exc:
            check_backward(state.loss, self, exc)  # a loss that cannot be backpropagated: say why
            raise
        state.loss = state.loss.detach()
        fire(BACKWARD_END, self)
        loop.optimizer.step()
        try:
            fire(BATCH_END, self)
        except CancelBatch as signal:  # the step is taken: nothing left to cancel
            raise scope_error(signal, f"at BatchEnd of {type(self).__name__}") from signal


@dataclass(frozen=True)
class ValidationPhase(Phase):
    """One evaluation pass: the model in eval mode under ``torch.no_grad()``.

    Events, in order: ``EpochBegin``, then per batch ``BatchBegin`` (``batch.x``, ``batch.y``),
    ``LossBegin`` (``batch.y_pred``, may be rewritten), ``BatchEnd`` (``batch.loss``), then
    ``EpochEnd``. The model's previous train/eval mode is restored after the epoch.
    """

    name: ClassVar[str] = "valid"
    events: ClassVar[tuple[type[Event], ...]] = (
        EpochBegin,
        BatchBegin,
        LossBegin,
        BatchEnd,
        EpochEnd,
    )

    def epoch_context(self, loop: Loop) -> contextlib.AbstractContextManager[None]:
        return evaluating(loop.model)

    def step(self, loop: Loop, batch: object) -> None:
        evaluate_batch(self, loop, loop.adapter.unpack(batch))


def evaluate_batch(phase: Phase, loop: Loop, pair: tuple[Any, Any], keep: Callable[[Any, Any], None] | None = None) -> None:
    """The step of an evaluating phase (``ValidationPhase`` and its siblings): ``pair`` is the
    batch's ``(x, y)``. ``BatchBegin``, the forward, ``LossBegin``, the loss, ``BatchEnd``. With
    ``keep`` (predictions), ``keep(y_pred, y)`` runs before ``BatchEnd`` and the loss is
    computed only when the batch has targets (``y`` is not None; else ``batch.loss`` is None)."""
    state, fire, adapter = loop.batch, loop.fire, loop.adapter
    state.x, state.y = pair
    state.y_pred = state.loss = None
    fire(BATCH_BEGIN, phase)
    state.y_pred = adapter.forward(loop.model, state.x)
    fire(LOSS_BEGIN, phase)
    if keep is None or state.y is not None:
        state.loss = adapter.loss(loop.loss_fn, state.y_pred, state.y)
        if state.loss.__class__ is not Tensor or state.loss.ndim:  # the full check only then
            check_loss(state.loss, phase)
    if keep is not None:
        keep(state.y_pred, state.y)
    try:
        fire(BATCH_END, phase)
    except CancelBatch as signal:  # the batch is evaluated: nothing left to cancel
        raise scope_error(signal, f"at BatchEnd of {type(phase).__name__}") from signal


@contextlib.contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[None]:
    """``model.eval()`` under ``torch.no_grad()``; the previous train/eval mode comes back after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)
