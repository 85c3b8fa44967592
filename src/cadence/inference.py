"""Evaluating and predicting: running the model on other data without changing training state.

``learner.validate(data)`` runs an ``EvaluationPhase`` epoch and ``learner.predict(data)`` /
``learner.get_preds(data)`` a ``PredictionPhase`` epoch. Both are phases of their own, siblings
of ``ValidationPhase`` rather than subclasses, and that is the whole rule that keeps training
state unchanged:

- handlers registered for ``TrainingPhase`` or ``ValidationPhase`` never run for them, so
  callbacks that act on validation results (early stopping, plateau schedules, checkpoints,
  your own ``@on(EpochEnd, phase=ValidationPhase)``) do not see an evaluation;
- ``Metrics`` keeps evaluation values under their own keys (``"eval/loss"``), so a callback that
  monitors a ``"valid/..."`` key does not see them either. Predictions are not tracked; where
  the data has targets, their loss is computed as in validation (``batch.loss`` at
  ``BatchEnd``), and it is None only for batches of inputs alone.

Handlers for every phase (``@on(BatchBegin)``) run as in validation: ``ToDevice`` moves the
batches, ``MixedPrecision`` runs the forward under autocast, ``Recorder`` and the printers count
and show the epoch. A callback that should react to validation and not to evaluation needs no
special code: it registers for ``ValidationPhase`` or monitors a ``valid/`` key.

Every random number generator is put back afterwards (``rng_kept``), so that a ``fit`` after an
evaluation runs as it would have without it. The values reach ``cbstate.metrics``, the return
value and the printers (``MetricsPrinter`` labels the row ``eval 1``, ``eval 2``, ...), not the
loggers, which log during ``fit`` only.

``learner.epoch(ValidationPhase(), data)`` called directly is a validation epoch *of training*:
every validation callback reacts to it. Evaluate held-out data with ``learner.validate(data)``
(or ``learner.epoch(EvaluationPhase(), data)``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, cast

import torch

from cadence.batches import map_tensors
from cadence.callback import Callback
from cadence.checkpointing.replay import data_generators
from cadence.checkpointing.rng import capture_rng, restore_rng
from cadence.errors import CadenceError
from cadence.events import BatchBegin, BatchEnd, EpochBegin, EpochEnd, Event, LossBegin
from cadence.fit_result import metric_lengths
from cadence.phases import Loop, Phase, ValidationPhase, evaluate_batch, evaluating
from cadence.state import CallbackState

__all__ = ["EvaluationPhase", "PredictionPhase", "Runner", "concatenate", "gather", "rng_kept", "validate"]


class Runner(Loop, Protocol):
    """What ``validate``, ``gather`` and ``lr_finder.lr_find`` need from the learner besides
    the ``Loop`` (``Learner`` implements it)."""

    @property
    def cbstate(self) -> CallbackState: ...

    @property
    def callbacks(self) -> tuple[Callback, ...]: ...

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
        evaluate_batch(self, loop, loop.adapter.unpack(batch))


@dataclass(frozen=True)
class PredictionPhase(Phase):
    """Predictions: the model in eval mode under ``torch.no_grad()``, the loss only where the
    data has targets.

    Events, in order: ``EpochBegin``, then per batch ``BatchBegin`` (``batch.x``, and
    ``batch.y``: the targets, or None when the data has none), ``LossBegin`` (``batch.y_pred``,
    may be rewritten: the rewrite is what is gathered), ``BatchEnd`` (``batch.loss``, computed
    by the learner's adapter as in validation when the batch has targets, as fastai's
    ``get_preds`` does; None for a batch of inputs alone), then ``EpochEnd``. ``Metrics`` does
    not track predictions.

    Attributes:
        outputs: Each batch's ``(y_pred, y)``, detached and copied to the CPU, in order.
    """

    name: ClassVar[str] = "predict"
    events: ClassVar[tuple[type[Event], ...]] = (EpochBegin, BatchBegin, LossBegin, BatchEnd, EpochEnd)
    outputs: list[tuple[Any, Any]] = field(default_factory=list, compare=False, repr=False)

    def epoch_context(self, loop: Loop) -> contextlib.AbstractContextManager[None]:
        return evaluating(loop.model)

    def step(self, loop: Loop, batch: object) -> None:
        evaluate_batch(self, loop, loop.adapter.unpack_inputs(batch), self._keep)

    def _keep(self, y_pred: Any, y: Any) -> None:
        self.outputs.append((map_tensors(_on_cpu, y_pred), map_tensors(_on_cpu, y)))


def validate(learner: Runner, data: Iterable[Any]) -> dict[str, float]:
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
    with rng_kept(data):
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


def gather(learner: Runner, data: Iterable[Any], *, concat: bool = True) -> tuple[Any, Any]:
    """Predict ``data`` in a ``PredictionPhase`` epoch; return ``(predictions, targets)``, each
    concatenated over the batches along the first dimension (tensors, and tuples, lists and
    dicts of them; anything else is a list with one item per batch), or with ``concat=False``
    a list with one item per batch. ``targets`` is None when the data has none.

    Raises:
        CadenceError: tensors of different shapes beyond the first dimension (sequences of
            different lengths), which cannot be joined: the message says to pass
            ``concat=False``.
    """
    phase = PredictionPhase()
    try:
        with rng_kept(data):
            learner.epoch(phase, data)
        predictions = [y_pred for y_pred, _ in phase.outputs]
        targets = [y for _, y in phase.outputs]
    finally:
        phase.outputs.clear()  # Recorder may keep the phase as a key: not its tensors
    has_targets = any(y is not None for y in targets)
    if not concat:
        return predictions, targets if has_targets else None
    return concatenate(predictions, "predictions"), concatenate(targets, "targets") if has_targets else None


@contextlib.contextmanager
def rng_kept(data: Iterable[Any]) -> Iterator[None]:
    """Put every random number generator back afterwards: Python's, NumPy's, torch's (CUDA's
    once in use) and the generators ``data`` draws its order from. Iterating a ``DataLoader``
    draws its base seed from torch's RNG, so without this an evaluation would change the
    shuffle and the dropout of the next ``fit``.

    Example:
        >>> from torch.utils.data import DataLoader
        >>> state = torch.get_rng_state()
        >>> with rng_kept(DataLoader(range(4))):
        ...     _ = list(DataLoader(range(4)))
        >>> torch.equal(state, torch.get_rng_state())
        True
    """
    generators = data_generators(data)
    state = capture_rng(generators)
    try:
        yield
    finally:
        restore_rng(state, generators)


def concatenate(items: list[Any], what: str = "outputs") -> Any:
    """Join per-batch outputs along the first dimension; ``what`` names them in errors.

    Raises:
        CadenceError: tensors whose shapes differ beyond the first dimension.

    Example:
        >>> concatenate([torch.zeros(2, 3), torch.ones(1, 3)]).shape
        torch.Size([3, 3])
        >>> concatenate([(torch.zeros(2), "a"), (torch.ones(1), "b")])
        (tensor([0., 0., 1.]), ['a', 'b'])
    """
    if items and all(isinstance(item, torch.Tensor) for item in items):
        tensors = cast(list[torch.Tensor], items)
        _check_joinable(tensors, what)
        return torch.stack(tensors) if tensors[0].ndim == 0 else torch.cat(tensors)
    first = items[0] if items else None
    if isinstance(first, (tuple, list)) and all(type(i) is type(first) and len(i) == len(first) for i in items):
        joined = [concatenate([item[k] for item in items], f"{what}[{k}]") for k in range(len(first))]
        return type(first)(*joined) if hasattr(first, "_fields") else type(first)(joined)
    if isinstance(first, Mapping) and all(isinstance(i, Mapping) and i.keys() == first.keys() for i in items):
        return {key: concatenate([item[key] for item in items], f"{what}[{key!r}]") for key in first}
    return list(items)


def _check_joinable(tensors: list[torch.Tensor], what: str) -> None:
    first = tensors[0]
    for position, tensor in enumerate(tensors[1:], 2):
        if tensor.ndim != first.ndim or (first.ndim and tensor.shape[1:] != first.shape[1:]):
            raise CadenceError(
                f"The {what} of the batches cannot be joined into one tensor: batch 1 gives shape "
                f"{tuple(first.shape)} and batch {position} {tuple(tensor.shape)}, and only the first "
                f"dimension may differ (sequences of different lengths do this). Pass concat=False "
                f"for a list with one item per batch: learner.predict(data, concat=False) or "
                f"learner.get_preds(data, concat=False); or pad them to one length (in the data's "
                f"collate_fn, or in a LossBegin handler that rewrites batch.y_pred)."
            )


def _on_cpu(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().cpu()
