"""SanityCheck: one training and one validation batch through model and loss before training."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from cadence import READ, CadenceError, Callback, on
from cadence.batches import BatchAdapter, map_tensors
from cadence.events import FitBegin
from cadence.phases import Phase
from cadence.checkpointing.replay import data_generators
from cadence.checkpointing.rng import capture_rng, restore_rng

__all__ = ["SanityCheck", "SanityCheckError"]

log = logging.getLogger(__name__)


class SanityCheckError(CadenceError):
    """``SanityCheck`` found problems with the data, model or loss; the message lists them all."""


class SanityCheck(Callback):
    """Before the first epoch, runs the first training batch and the first validation batch
    through ``model`` and ``loss_fn``, and raises one ``SanityCheckError`` listing every problem
    found, each with its fix.

    It checks that each batch is an ``(x, y)`` pair, that ``model(x)`` runs, that
    ``loss_fn(y_pred, y)`` runs without warnings (such as a shape broadcast) and returns a finite
    scalar tensor, and that the training loss can be backpropagated to the model's parameters.
    Batches go through the learner's ``adapter`` as in training (``Learner(...,
    adapter=DictBatches("labels"))``: dict batches, ``model(**inputs)``, the model's own loss).

    Nothing changes: gradients are computed with ``torch.autograd.grad`` (no ``.grad`` is
    written), buffers such as BatchNorm statistics, module train/eval modes and the random
    number generators (Python's, NumPy's, torch's, and the generators a ``DataLoader`` draws
    its shuffle from) are restored, so training sees the same batches in the same order as
    without it, and the optimizer is not touched. The training batch runs
    in the model's current mode, the validation batch in eval mode under ``torch.no_grad()``.
    Tensors in ``x`` and ``y`` (also inside lists, tuples and dicts) are moved to the model's
    device first, as a device-moving callback such as ``ToDevice`` would. Other callbacks' handlers do not
    run, so rewrites they would make at ``BatchBegin`` or ``LossBegin`` are not applied.

    It runs at ``FitBegin`` of every ``fit`` with at least one epoch, on the data that fit runs
    on (``FitBegin.data``: the data passed to ``fit`` if any, else ``learner.data``). Data
    that is a one-shot iterator (a generator) is not consumed: with more than one epoch that is a
    problem (later epochs would get no batches), otherwise the check is skipped with a logged
    warning.

    Example:
        >>> import torch
        >>> from cadence.testing import make_test_learner
        >>> learner = make_test_learner(SanityCheck())
        >>> _ = learner.fit(1)  # passes
        >>> learner.data = ([(torch.randn(8, 3), torch.randn(8, 1))], [torch.randn(8, 1)])
        >>> learner.fit(1)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        cadence.callbacks.sanity.SanityCheckError: SanityCheck found 2 problems before the first epoch:
          1. train: model(x) raised RuntimeError: mat1 and mat2 shapes cannot be multiplied (8x3 and 1x1). x is a tensor of shape (8, 3); make the model accept the data's inputs.
          2. valid: Each batch must be an (x, y) pair; got a Tensor. Make the data yield (inputs, targets), ...
    """

    state_access = {"model": READ, "loss_fn": READ, "data": READ, "adapter": READ}

    @on(FitBegin)
    def check(self, event: FitBegin, phase: Phase, learner: Any) -> None:
        n_epochs = event.n_epochs
        data = event.data if event.data is not None else learner.data
        if n_epochs == 0:
            return
        if data is None:
            log.warning("SanityCheck had nothing to check: FitBegin carried no data and learner.data is None.")
            return
        model, loss_fn, adapter = learner.model, learner.loss_fn, learner.adapter
        problems: list[str] = []
        # Taking a batch draws from the data's generators (a DataLoader(shuffle=True,
        # generator=g) advances g): put every RNG back, so the first epoch's order is unchanged.
        # CUDA's states are in it once CUDA is in use, as it is for a model on the GPU.
        generators = _generators(data)
        rng = capture_rng(generators)
        try:
            for name, part in zip(("train", "valid"), data):
                if part is not None:
                    problems += _check_data(name, part, n_epochs, model, loss_fn, adapter)
        finally:
            restore_rng(rng, generators)
            adapter.clear()
        if problems:
            lines = "\n".join(f"  {i}. {problem}" for i, problem in enumerate(problems, 1))
            count = f"{len(problems)} problem{'s' * (len(problems) > 1)}"
            raise SanityCheckError(f"SanityCheck found {count} before the first epoch:\n{lines}")


def _generators(data: Iterable[Any]) -> dict[str, torch.Generator]:
    found: dict[str, torch.Generator] = {}
    for name, part in zip(("train", "valid"), data):
        for path, generator in data_generators(part).items():
            if not any(generator is g for g in found.values()):
                found[f"{name}.{path}"] = generator
    return found


def _check_data(
    name: str, data: Iterable[Any], n_epochs: int, model: torch.nn.Module, loss_fn: Any, adapter: BatchAdapter
) -> list[str]:
    if isinstance(data, Iterator):
        kind = type(data).__name__
        if n_epochs > 1:
            return [
                f"{name}: the data is a one-shot iterator ({kind}); it is used up by the first "
                f"epoch, so epochs 2 to {n_epochs} get no batches. Pass data that can be iterated "
                f"again, such as a list or a DataLoader."
            ]
        log.warning(
            "SanityCheck skipped the %s data: it is a one-shot iterator (%s) and taking a batch "
            "would use it up. Pass a list or a DataLoader to have it checked.", name, kind
        )
        return []
    try:
        batch = next(iter(data))
    except StopIteration:
        return [f"{name}: the data yields no batches. Pass a non-empty iterable of (x, y) batches."]
    except Exception as exc:
        return [f"{name}: taking the first batch raised {_error(exc)}; check the dataset and loader."]
    try:
        x, y = adapter.unpack(batch)
    except TypeError as exc:
        return [f"{name}: {exc}"]
    device = next(model.parameters(), torch.empty(0)).device
    x, y = (map_tensors(lambda t: t.to(device), v) for v in (x, y))
    return _check_batch(name, x, y, model, loss_fn, adapter)


def _check_batch(name: str, x: Any, y: Any, model: torch.nn.Module, loss_fn: Any, adapter: BatchAdapter) -> list[str]:
    training = name == "train"
    modes = [module.training for module in model.modules()]
    buffers = [buffer.detach().clone() for buffer in model.buffers()]
    try:
        if not training:
            model.eval()
        with torch.set_grad_enabled(training):
            try:
                y_pred = adapter.forward(model, x)
            except Exception as exc:
                return [f"{name}: model(x) raised {_error(exc)}. x is {_show(x)}; make the model accept the data's inputs."]
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    loss = adapter.loss(loss_fn, y_pred, y)
                except Exception as exc:
                    return [
                        f"{name}: loss_fn(y_pred, y) raised {_error(exc)}. y_pred is {_show(y_pred)} and "
                        f"y is {_show(y)}; make the model's output and the targets fit loss_fn."
                    ]
            problems = [
                f"{name}: loss_fn(y_pred, y) warned: {w.message} y_pred is {_show(y_pred)} and y is "
                f"{_show(y)}; make their shapes match what loss_fn expects."
                for w in caught
            ]
            return problems + _check_loss(name, loss, model)
    finally:
        for module, mode in zip(model.modules(), modes):
            module.training = mode
        with torch.no_grad():
            for buffer, saved in zip(model.buffers(), buffers):
                buffer.copy_(saved)


def _check_loss(name: str, loss: Any, model: torch.nn.Module) -> list[str]:
    if not isinstance(loss, torch.Tensor):
        return [
            f"{name}: loss_fn returned {type(loss).__name__} {loss!r}, not a tensor. Return a scalar "
            f"tensor, e.g. torch.nn.functional.mse_loss(y_pred, y)."
        ]
    problems = []
    if loss.ndim != 0:
        problems.append(
            f"{name}: loss_fn returned a tensor of shape {tuple(loss.shape)}; the loss must be a "
            f"scalar. Reduce it, e.g. with reduction='mean' or .mean()."
        )
    if not bool(torch.isfinite(loss.detach()).all()):
        problems.append(f"{name}: the loss is not finite ({_show(loss)}). Check the data for NaN or inf and the model's initialisation.")
    if name != "train" or problems:
        return problems
    parameters = [p for p in model.parameters() if p.requires_grad]
    if not loss.requires_grad or not parameters:
        return [
            f"{name}: the loss does not require grad, so there is nothing to backpropagate. Check "
            f"that the model has parameters with requires_grad=True and that loss_fn does not "
            f"detach its result (.item(), .detach(), torch.no_grad())."
        ]
    try:
        grads = torch.autograd.grad(loss, parameters, allow_unused=True)
    except Exception as exc:
        return [f"{name}: backpropagating the loss raised {_error(exc)}."]
    if all(g is None for g in grads):
        return [f"{name}: the loss does not depend on any of the model's parameters; compute it from model(x)."]
    return []


def _show(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        if value.ndim == 0:
            return f"the {value.dtype} scalar {value.item()}"
        return f"a tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


def _error(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
