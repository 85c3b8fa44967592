"""Evaluating and predicting: running the model on other data without changing training state.

``learner.validate(data)`` runs an ``EvaluationPhase`` epoch and ``learner.predict(data)`` /
``learner.get_preds(data)`` a ``PredictionPhase`` epoch. Both are phases of their own, siblings
of ``ValidationPhase`` rather than subclasses, and that is the whole rule that keeps training
state unchanged:

- handlers registered for ``TrainingPhase`` or ``ValidationPhase`` never run for them, so
  callbacks that act on validation results (early stopping, plateau schedules, checkpoints,
  your own ``@on(EpochEnd, phase=ValidationPhase)``) do not see an evaluation;
- ``Metrics`` keeps evaluation values under their own keys (``"eval/loss"``), so a callback that
  monitors a ``"valid/..."`` key does not see them either. Predictions have no loss and are not
  tracked.

Handlers for every phase (``@on(BatchBegin)``) run as in validation: ``ToDevice`` moves the
batches, ``MixedPrecision`` runs the forward under autocast, ``Recorder`` and the printers count
and show the epoch. A callback that should react to validation and not to evaluation needs no
special code: it registers for ``ValidationPhase`` or monitors a ``valid/`` key.

``learner.epoch(ValidationPhase(), data)`` called directly is a validation epoch *of training*:
every validation callback reacts to it. Evaluate held-out data with ``learner.validate(data)``
(or ``learner.epoch(EvaluationPhase(), data)``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, cast

import torch

from cadence.errors import CadenceError, CancelBatch
from cadence.events import BatchBegin, BatchEnd, EpochBegin, EpochEnd, Event, LossBegin
from cadence.fit_result import metric_lengths
from cadence.phases import Loop, Phase, ValidationPhase, evaluating, scope_error
from cadence.state import CallbackState

__all__ = ["EvaluationPhase", "PredictionPhase", "concatenate", "gather", "validate"]

_BATCH_BEGIN, _LOSS_BEGIN, _BATCH_END = BatchBegin(), LossBegin(), BatchEnd()
# ValidationPhase.step uses its phase only to fire the events and to name it in errors.
_validation_step = cast(Callable[[Phase, Loop, object], None], ValidationPhase.step)


class _Runner(Loop, Protocol):
    """What ``validate`` and ``gather`` need from the learner besides the ``Loop``."""

    @property
    def cbstate(self) -> CallbackState: ...

    def epoch(self, phase: Phase, data: Iterable[Any]) -> None: ...


@dataclass(frozen=True)
class EvaluationPhase(Phase):
    """Evaluation of held-out data: the validation step (model in eval mode under
    ``torch.no_grad()``), in a phase whose results are not training's.

    Events, in order: ``EpochBegin``, then per batch ``BatchBegin`` (``batch.x``, ``batch.y``),
    ``LossBegin`` (``batch.y_pred``, may be rewritten), ``BatchEnd`` (``batch.loss``), then
    ``EpochEnd``. ``Metrics`` records the values as ``"eval/<metric>"``, and a
    ``MetricSpec(..., phases="valid")`` covers evaluation too.
    """

    name: ClassVar[str] = "eval"
    events: ClassVar[tuple[type[Event], ...]] = ValidationPhase.events

    def epoch_context(self, loop: Loop) -> contextlib.AbstractContextManager[None]:
        return evaluating(loop.model)

    def step(self, loop: Loop, batch: object) -> None:
        _validation_step(self, loop, batch)


@dataclass(frozen=True)
class PredictionPhase(Phase):
    """Predictions: the model in eval mode under ``torch.no_grad()``, and no loss.

    Events, in order: ``EpochBegin``, then per batch ``BatchBegin`` (``batch.x``, and
    ``batch.y``: the targets, or None when the data has none), ``LossBegin`` (``batch.y_pred``,
    may be rewritten: the rewrite is what is gathered), ``BatchEnd`` (``batch.loss`` is None),
    then ``EpochEnd``. A handler for every phase that reads ``batch.loss`` at ``BatchEnd`` gets
    None here (``Metrics`` does not track predictions).

    Attributes:
        outputs: Each batch's ``(y_pred, y)``, detached and copied to the CPU, in order.
    """

    name: ClassVar[str] = "predict"
    events: ClassVar[tuple[type[Event], ...]] = (EpochBegin, BatchBegin, LossBegin, BatchEnd, EpochEnd)
    outputs: list[tuple[Any, Any]] = field(default_factory=list, compare=False, repr=False)

    def epoch_context(self, loop: Loop) -> contextlib.AbstractContextManager[None]:
        return evaluating(loop.model)

    def step(self, loop: Loop, batch: object) -> None:
        state, fire, adapter = loop.batch, loop.fire, loop.adapter
        state.x, state.y = adapter.unpack_inputs(batch)
        state.y_pred = state.loss = None
        fire(_BATCH_BEGIN, self)
        state.y_pred = adapter.forward(loop.model, state.x)
        fire(_LOSS_BEGIN, self)
        self.outputs.append((_to_cpu(state.y_pred), _to_cpu(state.y)))
        try:
            fire(_BATCH_END, self)
        except CancelBatch as signal:  # the batch is predicted: nothing left to cancel
            raise scope_error(signal, f"at BatchEnd of {type(self).__name__}") from signal


def validate(learner: _Runner, data: Iterable[Any]) -> dict[str, float]:
    """Evaluate ``data`` in an ``EvaluationPhase`` epoch and return the epoch values ``Metrics``
    recorded, by metric name (``{"loss": 0.12, "accuracy": 0.97}``).

    Raises:
        CadenceError: the learner has no ``Metrics`` callback, or the data yields no batches.
    """
    if not hasattr(learner.cbstate.entries().get("metrics"), "epochs"):
        raise CadenceError(
            "validate() returns the values Metrics computes, and this learner has no Metrics "
            "callback. Add one: Learner(..., callbacks=[Metrics()]) (the default callbacks include it)."
        )
    before = metric_lengths(learner.cbstate)
    learner.epoch(EvaluationPhase(), data)
    epochs = learner.cbstate.metrics.epochs
    prefix = f"{EvaluationPhase.name}/"
    found = {
        key[len(prefix) :]: float(values[-1])
        for key, values in epochs.items()
        if key.startswith(prefix) and len(values) > before.get(key, 0)
    }
    if not found:
        raise CadenceError("validate(data): the data yielded no batches, so there is nothing to report.")
    return found


def gather(learner: _Runner, data: Iterable[Any]) -> tuple[Any, Any]:
    """Predict ``data`` in a ``PredictionPhase`` epoch; return ``(predictions, targets)``, each
    concatenated over the batches along the first dimension (tensors, and tuples, lists and
    dicts of them; anything else is a list with one item per batch). ``targets`` is None when
    the data has none.
    """
    phase = PredictionPhase()
    try:
        learner.epoch(phase, data)
        predictions = [y_pred for y_pred, _ in phase.outputs]
        targets = [y for _, y in phase.outputs]
    finally:
        phase.outputs.clear()  # Recorder may keep the phase as a key: not its tensors
    has_targets = any(y is not None for y in targets)
    return concatenate(predictions), concatenate(targets) if has_targets else None


def concatenate(items: list[Any]) -> Any:
    """Join per-batch outputs along the first dimension.

    Example:
        >>> concatenate([torch.zeros(2, 3), torch.ones(1, 3)]).shape
        torch.Size([3, 3])
        >>> concatenate([(torch.zeros(2), "a"), (torch.ones(1), "b")])
        (tensor([0., 0., 1.]), ['a', 'b'])
    """
    if items and all(isinstance(item, torch.Tensor) for item in items):
        tensors = cast(list[torch.Tensor], items)
        return torch.stack(tensors) if tensors[0].ndim == 0 else torch.cat(tensors)
    first = items[0] if items else None
    if isinstance(first, (tuple, list)) and all(type(i) is type(first) and len(i) == len(first) for i in items):
        joined = [concatenate([item[k] for item in items]) for k in range(len(first))]
        return type(first)(*joined) if hasattr(first, "_fields") else type(first)(joined)
    if isinstance(first, Mapping) and all(isinstance(i, Mapping) and i.keys() == first.keys() for i in items):
        return {key: concatenate([item[key] for item in items]) for key in first}
    return list(items)


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(_to_cpu(v) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(_to_cpu(v) for v in value)
    if isinstance(value, Mapping):
        return {k: _to_cpu(v) for k, v in value.items()}
    return value
