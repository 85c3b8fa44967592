"""How a batch meets the model: unpacking it into ``(x, y)``, calling the model, getting the loss.

Every built-in phase goes through the learner's ``BatchAdapter`` (``Learner(..., adapter=...)``)
at three points of a batch, so that dict batches, models with several inputs and models that
return objects (a HuggingFace-style output with ``.loss`` and ``.logits``) need no phase of
their own:

1. ``x, y = adapter.unpack(batch)`` before ``BatchBegin`` (prediction calls
   ``adapter.unpack_inputs(batch)``, where the targets may be missing);
2. ``batch.y_pred = adapter.forward(model, batch.x)`` before ``LossBegin``;
3. ``batch.loss = adapter.loss(loss_fn, batch.y_pred, batch.y)`` after ``LossBegin``.

The default, ``BatchAdapter()``, is what cadence always did: ``(x, y)`` pairs, ``model(x)``,
``loss_fn(y_pred, y)``. ``TupleBatches`` and ``DictBatches`` cover the common other shapes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

__all__ = ["BatchAdapter", "DictBatches", "TupleBatches", "map_tensors"]

_FIX = "or subclass cadence.batches.BatchAdapter and override unpack() for your batches"


class BatchAdapter:
    """The default adapter: batches are ``(x, y)`` pairs, the model is called as ``model(x)``
    and the loss as ``loss_fn(y_pred, y)``.

    Extending:
        1. Subclass ``BatchAdapter`` and override what differs for your batches; each method
           runs once per batch, so keep it to the unpacking and the call.
        2. ``unpack(batch) -> (x, y)``: what ``batch.x`` and ``batch.y`` hold. A batch it does not
           understand is a ``TypeError`` that says what it expected and what to write.
        3. ``unpack_inputs(batch) -> (x, y or None)``: the same for prediction, where the data
           may hold inputs only.
        4. ``forward(model, x) -> y_pred`` and ``loss(loss_fn, y_pred, y) -> loss``. An adapter
           that keeps something from ``forward`` for ``loss`` (the model's own loss) lets go of
           it in ``clear()``, which the learner calls whenever it clears the batch.
        5. Pass it to the learner: ``Learner(model, loss_fn, adapter=MyBatches())``.

    Example:
        >>> adapter = BatchAdapter()
        >>> adapter.unpack((1, 2)), adapter.unpack_inputs(3)
        ((1, 2), (3, None))
    """

    def unpack(self, batch: object) -> tuple[Any, Any]:
        """Split one item of the data into ``(x, y)``."""
        if isinstance(batch, (tuple, list)) and len(batch) == 2:
            return batch[0], batch[1]
        raise TypeError(_not_a_pair(batch))

    def unpack_inputs(self, batch: object) -> tuple[Any, Any]:
        """For prediction: an ``(x, y)`` pair, a 1-tuple ``(x,)`` (what
        ``DataLoader(TensorDataset(x))`` yields) or a bare tensor ``x``; ``y`` is None when the
        batch has no targets."""
        if isinstance(batch, (tuple, list)):
            if len(batch) == 1:
                return batch[0], None
            return self.unpack(batch)
        if isinstance(batch, Mapping):
            raise TypeError(_not_a_pair(batch))
        return batch, None

    def forward(self, model: Callable[..., Any], x: Any) -> Any:
        """Call the model on the inputs; the result becomes ``batch.y_pred``."""
        return model(x)

    def loss(self, loss_fn: Callable[..., Any], y_pred: Any, y: Any) -> Any:
        """Compute the loss; the result becomes ``batch.loss``."""
        return loss_fn(y_pred, y)

    def clear(self) -> None:
        """Forget anything kept from the last batch (the learner calls it when it clears the
        batch: at the end of ``fit``, ``epoch`` and so ``validate``, ``predict``, ``lr_find``),
        so that no tensor outlives its batch. The default keeps nothing."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class _ModelOutputs(BatchAdapter):
    """Model outputs that are objects: with ``prediction="logits"`` the output's ``logits``
    become ``batch.y_pred`` and its ``loss``, when not None, is the loss."""

    def __init__(self, prediction: str | None) -> None:
        if prediction is not None and not (isinstance(prediction, str) and prediction.isidentifier()):
            raise ValueError(
                f"{type(self).__name__}(prediction=...) names the attribute of the model's output "
                f'to use as y_pred, e.g. prediction="logits", or None for the output itself; got '
                f"{prediction!r}."
            )
        self.prediction = prediction
        self._model_loss: Any = None  # from forward() to loss() of the same batch

    def _output(self, output: Any) -> Any:
        self._model_loss = None  # a batch cancelled before its loss leaves none behind
        if self.prediction is None:
            return output
        if isinstance(output, Mapping) and self.prediction in output:
            self._model_loss = output.get("loss")
            return output[self.prediction]
        if not hasattr(output, self.prediction):
            raise TypeError(
                f"{type(self).__name__}(prediction={self.prediction!r}): the model returned a "
                f"{type(output).__name__}, which has no {self.prediction!r}. Name the attribute "
                f"that holds the predictions, or prediction=None to keep the output as it is."
            )
        self._model_loss = getattr(output, "loss", None)
        return getattr(output, self.prediction)

    def loss(self, loss_fn: Callable[..., Any], y_pred: Any, y: Any) -> Any:
        model_loss, self._model_loss = self._model_loss, None
        return model_loss if model_loss is not None else loss_fn(y_pred, y)

    def clear(self) -> None:
        self._model_loss = None


class TupleBatches(_ModelOutputs):
    """Batches ``(x1, ..., xn, y)`` for a model called as ``model(x1, ..., xn)``; ``batch.x`` is
    the tuple of inputs. In prediction a batch of ``n_inputs`` items has no targets.

    Args:
        n_inputs: How many inputs come before the target.
        prediction: The attribute (or key) of the model's output that holds the predictions,
            e.g. ``"logits"``; the output's ``loss``, when it is not None, is then the loss.
            None (the default) keeps the output as ``batch.y_pred``.

    Example:
        >>> adapter = TupleBatches(2)
        >>> adapter.unpack(("image", "mask", "label"))
        (('image', 'mask'), 'label')
        >>> adapter.forward(lambda a, b: a + b, (1, 2))
        3
    """

    def __init__(self, n_inputs: int, *, prediction: str | None = None) -> None:
        if isinstance(n_inputs, bool) or not isinstance(n_inputs, int) or n_inputs < 1:
            raise ValueError(f"TupleBatches(n_inputs=...) expects an int >= 1; got {n_inputs!r}.")
        super().__init__(prediction)
        self.n_inputs = n_inputs

    def unpack(self, batch: object) -> tuple[Any, Any]:
        n = self.n_inputs
        if isinstance(batch, (tuple, list)) and len(batch) == n + 1:
            return tuple(batch[:n]), batch[n]
        raise TypeError(self._mismatch(batch, f"{n + 1} items, {_inputs(n)} then the target"))

    def unpack_inputs(self, batch: object) -> tuple[Any, Any]:
        if isinstance(batch, (tuple, list)) and len(batch) == self.n_inputs:
            return tuple(batch), None
        if isinstance(batch, (tuple, list)) and len(batch) == self.n_inputs + 1:
            return self.unpack(batch)
        raise TypeError(self._mismatch(batch, f"{_inputs(self.n_inputs)}, optionally followed by the target"))

    def forward(self, model: Callable[..., Any], x: Any) -> Any:
        return self._output(model(*x))

    def _mismatch(self, batch: object, expected: str) -> str:
        return (
            f"TupleBatches({self.n_inputs}) expects each batch to be a tuple of {expected}; got "
            f"{_shown(batch)}. Set n_inputs to the number of inputs, {_FIX}."
        )

    def __repr__(self) -> str:
        return f"TupleBatches({self.n_inputs}, prediction={self.prediction!r})"


class DictBatches(_ModelOutputs):
    """Dict batches (``{"input_ids": ..., "attention_mask": ..., "labels": ...}``) for a model
    called with keyword arguments, ``model(**inputs)``. ``batch.x`` is the dict of inputs and
    ``batch.y`` the target; in prediction a batch without the target key has none.

    For a HuggingFace-style model, which computes its own loss when given the labels and
    returns an object with ``.loss`` and ``.logits``:
    ``DictBatches("labels", pass_target=True, prediction="logits")``. ``batch.y_pred`` then
    holds the logits (what metrics and ``predict`` see) and the loss is the model's.

    Args:
        target: The key of the targets.
        pass_target: Pass the target to the model too (``model(**inputs, labels=...)``).
        prediction: The attribute (or key) of the model's output that holds the predictions,
            e.g. ``"logits"``; the output's ``loss``, when it is not None, is then the loss
            (a ``LossBegin`` rewrite of ``batch.y_pred`` does not change the model's loss).
            None (the default) keeps the output as ``batch.y_pred``.

    Example:
        >>> adapter = DictBatches("label")
        >>> adapter.unpack({"image": 1, "label": 0})
        ({'image': 1}, 0)
        >>> adapter.forward(lambda image: image * 10, {"image": 1})
        10
    """

    def __init__(self, target: str = "labels", *, pass_target: bool = False, prediction: str | None = None) -> None:
        if not isinstance(target, str):
            raise TypeError(f'DictBatches(target=...) is the key of the targets, e.g. "labels"; got {target!r}.')
        super().__init__(prediction)
        self.target, self.pass_target = target, pass_target

    def unpack(self, batch: object) -> tuple[Any, Any]:
        if not isinstance(batch, Mapping):
            raise TypeError(
                f"DictBatches expects each batch to be a dict such as {{\"input_ids\": ..., "
                f"{self.target!r}: ...}}; got {_shown(batch)}. For (x, y) batches leave out "
                f"adapter=, {_FIX}."
            )
        if self.target not in batch:
            raise TypeError(
                f"DictBatches(target={self.target!r}): the batch has the keys "
                f"{', '.join(map(repr, batch))} but no {self.target!r}. Name the key that holds the "
                f"targets, e.g. DictBatches(target={next(iter(batch), 'label')!r})."
            )
        return self._inputs(batch), batch[self.target]

    def unpack_inputs(self, batch: object) -> tuple[Any, Any]:
        if isinstance(batch, Mapping) and self.target not in batch:
            return dict(batch), None
        return self.unpack(batch)

    def _inputs(self, batch: Mapping[Any, Any]) -> dict[Any, Any]:
        if self.pass_target:
            return dict(batch)
        return {k: v for k, v in batch.items() if k != self.target}

    def forward(self, model: Callable[..., Any], x: Any) -> Any:
        return self._output(model(**x))

    def __repr__(self) -> str:
        return (
            f"DictBatches({self.target!r}, pass_target={self.pass_target}, prediction={self.prediction!r})"
        )


def _inputs(n: int) -> str:
    return f"{n} input{'s' * (n != 1)}"


def _shown(batch: object) -> str:
    shown = f"a {type(batch).__name__}"
    if isinstance(batch, (tuple, list)):
        shown += f" of length {len(batch)}"
    elif isinstance(batch, Mapping):
        shown += f" with the keys {', '.join(map(repr, list(batch)[:6]))}"
    return shown


def _not_a_pair(batch: object) -> str:
    if isinstance(batch, Mapping):
        hint = 'For dict batches write Learner(..., adapter=DictBatches(target="labels")).'
    elif isinstance(batch, (tuple, list)) and len(batch) > 2:
        hint = (
            f"For a model with {len(batch) - 1} inputs, (x1, ..., y), write "
            f"Learner(..., adapter=TupleBatches(n_inputs={len(batch) - 1}))."
        )
    else:
        hint = "For other batches, subclass cadence.batches.BatchAdapter: Learner(..., adapter=MyBatches())."
    return (
        f"Each batch must be an (x, y) pair; got {_shown(batch)}. Make the data yield (inputs, "
        f"targets), e.g. DataLoader(TensorDataset(x, y), batch_size=32). {hint}"
    )


def map_tensors(function: Callable[[torch.Tensor], Any], value: Any) -> Any:
    """``value`` with ``function`` applied to every tensor in it: tensors, and tuples (named
    tuples too), lists and mappings of them, at any depth (a mapping comes back as a dict);
    anything else is kept as it is. How ``ToDevice`` moves batches and ``predict`` brings
    outputs to the CPU.

    Example:
        >>> map_tensors(lambda t: t * 2, {"a": torch.ones(1), "b": [torch.zeros(1), "tag"]})
        {'a': tensor([2.]), 'b': [tensor([0.]), 'tag']}
    """
    if isinstance(value, torch.Tensor):
        return function(value)
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(map_tensors(function, v) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(map_tensors(function, v) for v in value)
    if isinstance(value, Mapping):
        return {k: map_tensors(function, v) for k, v in value.items()}
    return value
