"""What the loop tells the user about their model, loss and data when they misbehave.

Everything here runs off the hot path: when something already failed, once per epoch, or when
the data is handed over.

- ``check_loss``: a ``loss_fn`` that did not return a scalar tensor becomes a ``TypeError`` or
  ``ValueError`` that says what it returned and what to write. The phases call it only when
  their one-line check (the tensor's class and ``ndim``) does not pass at once.
  ``check_backward``: once ``backward()`` failed, a training loss without a graph or one a
  ``BackwardBegin`` handler replaced.
- ``note_step_error``: an exception raised inside the model or the loss gets a note naming the
  phase, the epoch and batch (when a ``Recorder`` counts them) and what was passed. The
  exception keeps its type.
- ``warn_no_batches``: an epoch that drew no batches, from empty data or from an iterator that
  an earlier epoch used up, is a ``DataWarning``.
- ``check_data``: data that can never yield ``(x, y)`` batches (a string, a dict, a tensor, a
  map-style dataset) is a ``TypeError`` when it is handed over, with the fix.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sized
from types import FrameType, TracebackType
from typing import Any, NoReturn

import torch

from cadence.errors import CadenceError, CancelSignal, DataWarning

__all__ = ["check_backward", "check_data", "check_loss", "describe", "note_step_error", "warn_no_batches"]

#: Set by the checkpoint wrapper of the training data: batches a resume skipped in the current
#: pass. A resumed epoch whose remaining batches are none drew nothing, and that is no warning.
RESUMED_BATCHES = "batches_skipped_by_resume"

_FIX_ITERATOR = (
    "Pass data that starts over every epoch: a list (list(batches)), a DataLoader, or an object "
    "whose __iter__ returns a new iterator, e.g. class Batches: def __iter__(self): return make_batches()."
)


def describe(value: object, depth: int = 0) -> str:
    """A short description of ``value`` for messages: type, and shape for tensors.

    Example:
        >>> describe(torch.zeros(32, 10))
        'a float32 tensor of shape (32, 10) on cpu'
        >>> describe((torch.zeros(()), 0.5))
        'a tuple of 2 (a float32 tensor of shape () on cpu, a float (0.5))'
    """
    if isinstance(value, torch.Tensor):
        dtype = str(value.dtype).removeprefix("torch.")
        return f"{_a(dtype)} tensor of shape {tuple(value.shape)} on {value.device}"
    if value is None:
        return "None"
    kind = _a(type(value).__name__)
    if isinstance(value, (bool, int, float)):
        return f"{kind} ({value!r})"
    if isinstance(value, (tuple, list)):
        if depth > 0 or not value:
            return f"{kind} of {len(value)}"
        shown = ", ".join(describe(v, depth + 1) for v in value[:3])
        more = ", ..." if len(value) > 3 else ""
        return f"{kind} of {len(value)} ({shown}{more})"
    if isinstance(value, Mapping):
        keys = list(value)[:5]
        return f"{kind} with keys {keys}{' ...' if len(value) > 5 else ''}"
    return kind


def _a(name: str) -> str:
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


# ---- the loss -----------------------------------------------------------------------------


def check_loss(loss: object, phase: object) -> None:
    """Raise unless ``loss`` is a scalar (0-d) tensor, what ``backward()`` starts from and what
    metrics average.

    Raises:
        TypeError: ``loss`` is not a tensor.
        ValueError: ``loss`` is a tensor with dimensions.

    Example:
        >>> check_loss(torch.tensor(0.5), None)
        >>> check_loss(0.5, None)
        Traceback (most recent call last):
        ...
        TypeError: loss_fn returned a float (0.5), but it must return a scalar tensor...
    """
    if isinstance(loss, torch.Tensor) and loss.ndim == 0:
        return
    where = f" in {type(phase).__name__}" if phase is not None else ""
    what = f"loss_fn returned {describe(loss)}{where}, but it must return a scalar tensor"
    if isinstance(loss, torch.Tensor):
        if loss.numel() == 1:
            hint = "Make it 0-d, e.g. loss_fn=lambda y_pred, y: my_loss(y_pred, y).squeeze()."
        else:
            hint = (
                "Reduce it over the batch, e.g. loss_fn=torch.nn.CrossEntropyLoss(reduction=\"mean\") "
                "or loss_fn=lambda y_pred, y: per_sample_loss(y_pred, y).mean()."
            )
        raise ValueError(f"{what} (0-d: one number to backpropagate and to average). {hint}")
    if isinstance(getattr(loss, "loss", None), torch.Tensor):
        hint = (
            f"The {type(loss).__name__} it returned has a loss tensor: return that, e.g. "
            f"loss_fn=lambda y_pred, y: compute(y_pred, y).loss."
        )
    elif isinstance(loss, (tuple, list)):
        hint = "Return the loss alone, e.g. loss_fn=lambda y_pred, y: my_loss(y_pred, y)[0]."
    elif loss is None:
        hint = "Does it end with return? Return the loss, e.g. return ((y_pred - y) ** 2).mean()."
    elif isinstance(loss, (int, float)):
        hint = (
            "A Python number has no gradient (.item() or float() detaches it): return the tensor, "
            "e.g. loss_fn=torch.nn.functional.mse_loss."
        )
    else:
        hint = "Return a tensor, e.g. loss_fn=torch.nn.functional.cross_entropy."
    raise TypeError(f"{what}. {hint}")


def check_backward(loss: object, phase: object, error: BaseException) -> None:
    """After ``loss.backward()`` raised ``error``: raise a ``TypeError`` or ``ValueError`` (from
    it) that says why when ``batch.loss`` cannot be backpropagated; otherwise return, and the
    caller re-raises ``error``.

    ``loss_fn``'s result was checked before ``BackwardBegin``; what is wrong now was either
    there from the start (no graph) or set by a ``BackwardBegin`` handler.
    """
    name = type(phase).__name__
    if not isinstance(loss, torch.Tensor) or loss.ndim:
        kind = ValueError if isinstance(loss, torch.Tensor) else TypeError
        raise kind(
            f"batch.loss is {describe(loss)} when backward() runs in {name}: loss_fn returned a "
            f"scalar tensor, so a BackwardBegin handler set it to this. A handler that rewrites "
            f"the loss must leave a scalar tensor, e.g. learner.batch.loss = learner.batch.loss * 2."
        ) from error
    if not loss.requires_grad:
        raise ValueError(
            f"batch.loss in {name} is {describe(loss)} that does not require grad, "
            f"so there is nothing to backpropagate: loss_fn (or a BackwardBegin handler) computed "
            f"it outside the model's graph (detached, through .item() or torch.tensor(...), or "
            f"under torch.no_grad()), or the model has no trainable parameters. Compute it from "
            f"y_pred with tensor operations, e.g. loss_fn=torch.nn.functional.mse_loss."
        ) from error


# ---- errors from the model and the loss ----------------------------------------------------


def note_step_error(exc: BaseException, phase: object, loop: Any, *, in_epoch: bool) -> None:
    """Note on ``exc``, raised by ``phase.step``, where it came from: the model or ``loss_fn``
    (with what was passed), or which batch of which epoch was being processed.

    Errors from handlers come through ``loop.fire`` and already carry the executor's note;
    signals are not errors. Neither gets a note here.
    """
    if isinstance(exc, CancelSignal):
        return
    source = _source(exc.__traceback__, loop)
    if source == "handler" or (source is None and isinstance(exc, CadenceError)):
        return  # the executor's note says where; cadence's own errors say it themselves
    name = type(phase).__name__
    position = _position(phase, loop) if in_epoch else None
    at = f"{name}{', ' + position if position else ''}"
    batch = loop.batch
    if source == "model":
        exc.add_note(f"Raised by the model in {at}, called as model(x) with x: {describe(batch.x)}.")
    elif source == "loss_fn":
        exc.add_note(
            f"Raised by loss_fn in {at}, called as loss_fn(y_pred, y) with y_pred: "
            f"{describe(batch.y_pred)}, y: {describe(batch.y)}."
        )
    elif position:
        exc.add_note(f"Raised while {name} processed {position}.")


def _source(tb: TracebackType | None, loop: Any) -> str | None:
    """``"model"``, ``"loss_fn"`` or ``"handler"``: the first of them found on the way from the
    step to where ``exc`` was raised; None when the step's own code raised it."""
    model, loss_fn = getattr(loop, "model", None), getattr(loop, "loss_fn", None)
    owners, codes = _loss_frames(loss_fn)
    while tb is not None:
        frame = tb.tb_frame
        owner = _self_of(frame)
        if owner is loop and frame.f_code.co_name == "fire":
            return "handler"
        if model is not None and owner is model:
            return "model"
        if (owner is not None and any(owner is o for o in owners)) or frame.f_code in codes:
            return "loss_fn"
        tb = tb.tb_next
    return None


def _self_of(frame: FrameType) -> object:
    code = frame.f_code
    if not code.co_argcount or code.co_varnames[0] != "self":
        return None
    return frame.f_locals.get("self")


def _loss_frames(fn: object) -> tuple[tuple[object, ...], tuple[object, ...]]:
    """How a frame of ``fn`` is recognised: the ``self`` of a callable object or module (a
    ``functools.partial``'s too), and the code of a function or of a bound method."""
    if fn is None:
        return (), ()
    inner = getattr(fn, "func", None)  # functools.partial
    owners = tuple(o for o in (fn, inner) if o is not None and not _is_function(o))
    codes = []
    for candidate in (fn, inner):
        code = getattr(getattr(candidate, "__func__", candidate), "__code__", None)
        if code is not None:
            codes.append(code)
    return owners, tuple(codes)


def _is_function(value: object) -> bool:
    return hasattr(value, "__code__") or hasattr(value, "__func__")


def _position(phase: object, loop: Any) -> str | None:
    """``"epoch 2, batch 5"`` from ``cbstate.history`` when a ``Recorder`` keeps it."""
    try:
        cbstate = loop.cbstate
        history = cbstate.history.get(phase) if "history" in cbstate else None
        if history is None:
            return None
        return f"epoch {int(history.epochs) + 1}, batch {int(history.steps_in_epoch) + 1}"
    except Exception:  # a custom loop, or a history of another shape: say nothing
        return None


# ---- the data -------------------------------------------------------------------------------


def warn_no_batches(phase: object, data: object) -> None:
    """Warn that an epoch of ``phase`` over ``data`` drew no batches, saying why and the fix."""
    if getattr(data, RESUMED_BATCHES, 0):
        return
    inner = getattr(data, "__wrapped__", data)  # the checkpoint wrapper stands for the data
    name = type(phase).__name__
    if isinstance(inner, Iterator):
        message = (
            f"{name} ran an epoch without batches: its data, {describe(inner)}, is an iterator, "
            f"which one pass uses up, so it was used up by an earlier epoch (or was empty). "
            f"{_FIX_ITERATOR}"
        )
    elif isinstance(inner, Sized) and _length(inner) == 0:
        message = (
            f"{name} ran an epoch without batches: its data, {describe(inner)}, is empty. Pass "
            f"data with at least one (x, y) batch."
        )
    else:
        message = (
            f"{name} ran an epoch without batches: its data, {describe(inner)}, yielded none. Pass "
            f"data with at least one (x, y) batch; an iterable must start over on each iter()."
        )
    warnings.warn(message, DataWarning, stacklevel=_outside_cadence())


def _outside_cadence() -> int:
    """The ``stacklevel`` at which ``warn_no_batches``'s warning names the first frame outside
    cadence: the user's ``fit()`` or ``epoch()`` call, not cadence's own loop."""
    # The whole package, not only this wing: phases.py and learner.py are cadence's frames too.
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
    frame, level = sys._getframe(2), 2  # 1: warn_no_batches itself
    while frame.f_back is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame, level = frame.f_back, level + 1
    return level


def _length(data: Sized) -> int | None:
    try:
        return len(data)
    except TypeError:
        return None


def check_data(data: object, where: str) -> None:
    """Raise ``TypeError`` unless ``data`` can be an iterable of ``(x, y)`` batches.

    Example:
        >>> check_data([(1, 2)], "fit(data=...): train")
        >>> check_data("batches", "fit(data=...): train")
        Traceback (most recent call last):
        ...
        TypeError: fit(data=...): train must be an iterable of (x, y) batches; got a str, ...
    """
    hint = None
    if isinstance(data, (str, bytes)):
        hint = "iterating it yields characters. Pass a list of (x, y) pairs or a DataLoader."
    elif isinstance(data, Mapping):
        hint = "iterating it yields its keys. Pass a list of (x, y) pairs, e.g. list(zip(inputs, targets))."
    elif isinstance(data, torch.Tensor):
        hint = (
            "iterating it yields rows, not (x, y) pairs. Pair inputs and targets in batches, "
            "e.g. DataLoader(TensorDataset(x, y), batch_size=32)."
        )
    elif not isinstance(data, Iterable):
        if callable(getattr(data, "__getitem__", None)) and isinstance(data, Sized):
            hint = "a dataset of samples. Batch it: DataLoader(dataset, batch_size=32)."
        else:
            hint = "which is not iterable. Pass a list of (x, y) batches or a DataLoader."
    if hint is not None:
        raise TypeError(f"{where} must be an iterable of (x, y) batches; got {describe(data)}, {hint}")
