"""MixedPrecision: the forward pass under ``torch.autocast``; loss scaling for float16."""

from __future__ import annotations

import threading
from typing import Any

import torch

from cadence import READ, WRITE, CadenceError, Callback, ConflictError, RunFirst, Unresolvable, on
from cadence.access import overlaps
from cadence.callback import access_at
from cadence.callbacks.device import ToDevice
from cadence.events import BackwardBegin, BackwardEnd, BatchBegin, BatchEnd, EpochEnd, Event, FitBegin, FitEnd
from cadence.phases import Phase, TrainingPhase

__all__ = ["MixedPrecision"]

_DTYPES = (torch.bfloat16, torch.float16)
_THREADS = (
    "MixedPrecision entered autocast on one thread and is leaving it on another; autocast "
    "state is per thread, so its handlers must run on the thread that runs the model. Use "
    "SerialExecutor, or a ThreadedExecutor that runs light handlers inline (inline_below > 0)."
)
_LOSS = ("batch", "loss")
_BOTH_ORDERS = (
    "MixedPrecision(torch.float16) and {other} cannot be ordered: {other} rewrites batch.loss at "
    "BackwardBegin, so it must run before the loss is scaled, and writes the model or the loss "
    "at BackwardEnd, so it must run after the gradients are unscaled; resolve_conflict answers "
    "once per pair, for both events. Split {other} into two callbacks, one per event (a penalty "
    "at BackwardBegin, a clipping at BackwardEnd); or add the term inside loss_fn, or use "
    "MixedPrecision(torch.bfloat16), which does not scale the loss."
)
_REWRITTEN = (
    "batch.loss was rewritten after MixedPrecision(torch.float16) scaled it, so part of the "
    "gradient is unscaled and unscaling would shrink it. A callback that rewrites batch.loss at "
    "BackwardBegin must run before MixedPrecision there: declare the write (e.g. "
    "@on(BackwardBegin, access={\"batch.loss\": WRITE})) and do not order it after "
    "MixedPrecision with run_after; or add the term inside loss_fn, or use "
    "MixedPrecision(torch.bfloat16), which does not scale the loss."
)


class MixedPrecision(Callback):
    """Runs the forward pass and the loss under ``torch.autocast(device_type, dtype)``, in
    training and validation: autocast is entered at ``BatchBegin`` and left before the
    backward pass (``BackwardBegin``), or at ``BatchEnd``, ``EpochEnd`` or ``FitEnd`` when a
    batch was cancelled, and in ``teardown`` when one failed, so it never leaks out of ``fit``,
    ``validate``, ``predict``, ``get_preds``, ``lr_find``, ``epoch`` or ``step``.

    With ``torch.float16`` a ``torch.amp.GradScaler`` scales the loss at ``BackwardBegin`` and
    unscales the gradients at ``BackwardEnd`` of every phase that fires them (its handlers are
    registered for every phase: ``TrainingPhase``, ``lr_find``'s sweep, and a phase of yours
    that fires those events, which then backpropagates a scaled loss); when the gradients hold
    inf or nan it sets them to ``None``, so the optimizer step skips every parameter (what
    ``GradScaler.step`` does), and the scale is updated. Reading that flag is one host-device synchronisation per step, as in
    ``GradScaler.step``. ``batch.loss`` holds the unscaled loss from ``BackwardEnd`` on.
    ``torch.bfloat16`` needs no scaler (and works on the CPU).

    Ordering: each handler declares its own access (``@on(..., access=...)``): scaling writes
    only ``batch.loss``, unscaling the model (the gradients) and ``batch.loss``. So at
    ``BackwardEnd`` unscaling comes before anything else touches the gradients: against any
    other callback that writes the model there (``GradientAccumulation``, ``GradientClipping``,
    yours) ``resolve_conflict`` answers ``RunFirst(self)``. At ``BackwardBegin`` a callback that
    rewrites ``batch.loss``, reading the model or not (a weight penalty), runs first
    (``RunFirst(other)``), so the loss is scaled last. A callback that does both (rewrites
    ``batch.loss`` at ``BackwardBegin`` and writes the model or the loss at ``BackwardEnd``)
    would need both orders from one answer: with ``torch.float16`` that is a ``ConflictError``
    when the learner is built, naming the fix (split it into two callbacks). A loss rewritten
    after scaling all the same (a ``run_after`` that puts the rewrite after this callback) is
    caught at the first ``BackwardEnd``. ``ToDevice`` runs first everywhere. Autocast state is
    per thread: this callback's handlers must run on the thread that runs the model (a
    ``CadenceError`` says so when they do not).

    Args:
        dtype: ``torch.bfloat16`` (default) or ``torch.float16``.
        device_type: ``"cuda"``, ``"cpu"``, ...; ``None`` takes the model's at ``FitBegin``.

    Example:
        >>> from cadence.testing import make_test_learner
        >>> learner = make_test_learner(MixedPrecision(torch.bfloat16))
        >>> _ = learner.fit(1)
        >>> torch.is_autocast_enabled("cpu")  # left behind after fit
        False
    """

    state_access = {"model": WRITE, "batch.loss": WRITE, "optimizer": READ}  # all its handlers touch
    thread_affine = True  # autocast is per thread: it must be entered where the forward runs

    def __init__(self, dtype: torch.dtype = torch.bfloat16, *, device_type: str | None = None) -> None:
        if dtype not in _DTYPES:
            raise ValueError(
                f"MixedPrecision(dtype=...) expects torch.bfloat16 or torch.float16; got {dtype!r}. "
                f"For full precision, leave MixedPrecision out."
            )
        if device_type is not None:
            if not isinstance(device_type, str) or not _autocast_available(device_type):
                raise ValueError(
                    f"MixedPrecision(device_type=...) expects a device type autocast supports, such "
                    f"as 'cuda' or 'cpu', or None for the model's; got {device_type!r}."
                )
            if device_type == "cuda" and not torch.cuda.is_available():
                raise ValueError("MixedPrecision(device_type='cuda'): CUDA is not available here; use None.")
        self.dtype = dtype
        self.device_type = device_type
        self.scaler: torch.amp.GradScaler | None = None
        self._autocast: torch.autocast | None = None
        self._active = False
        self._thread = 0  # autocast state is per thread: the one that entered must leave
        self._loss: torch.Tensor | None = None
        self._scaled = 0  # where the scaled loss lives, to check that it is what was backpropagated
        self._saved: dict[str, Any] | None = None  # scaler state loaded before the scaler exists

    @on(FitBegin, access={"model": READ})
    def fit_begin(self, event: Event, phase: Phase, learner: Any) -> None:
        self._setup(learner.model)

    @on(BatchBegin, access={"model": READ})
    def enter(self, event: Event, phase: Phase, learner: Any) -> None:
        if not self._active:
            # _setup here serves epoch() and step() called without fit().
            (self._autocast or self._setup(learner.model)).__enter__()  # type: ignore[no-untyped-call]
            self._active, self._thread = True, threading.get_ident()

    @on(BackwardBegin, access={"batch.loss": WRITE})
    def scale(self, event: Event, phase: Phase, learner: Any) -> None:
        self.leave(event, phase, learner)
        if self.scaler is not None:
            batch = learner.batch
            self._loss = batch.loss.detach()
            scaled = batch.loss = self.scaler.scale(batch.loss)
            self._scaled = scaled.data_ptr()

    @on(BackwardEnd, access={"model": WRITE, "batch.loss": WRITE, "optimizer": READ})
    def unscale(self, event: Event, phase: Phase, learner: Any) -> None:
        scaler = self.scaler
        if scaler is None:
            return
        batch = learner.batch
        if batch.loss.data_ptr() != self._scaled:
            raise CadenceError(_REWRITTEN)
        batch.loss, self._loss = self._loss, None
        optimizer = learner.optimizer
        scaler.unscale_(optimizer)
        # GradScaler.step reads the same record; the core runs optimizer.step() itself.
        found = scaler._per_optimizer_states[id(optimizer)]["found_inf_per_device"]
        if not found:  # no gradients at all: nothing to check, nothing to update
            scaler._per_optimizer_states.pop(id(optimizer))
            return
        if sum(v.item() for v in found.values()):
            for group in optimizer.param_groups:
                for param in group["params"]:
                    param.grad = None
        scaler.update()

    @on(BatchEnd, access={})
    @on(EpochEnd, access={})
    @on(FitEnd, access={})
    def leave(self, event: Event, phase: Phase, learner: Any) -> None:
        self.teardown()

    def teardown(self) -> None:
        """Leave autocast if a batch entered it and nothing left it yet: the model raised, or a
        batch was cancelled, in ``fit`` or outside it (``validate``, ``predict``, ``lr_find``,
        ``epoch``, ``step``)."""
        if self._active and self._autocast is not None:
            if threading.get_ident() != self._thread:
                raise CadenceError(_THREADS)
            self._active = False
            self._autocast.__exit__(None, None, None)

    def _setup(self, model: torch.nn.Module) -> torch.autocast:
        device_type = self.device_type or _device_type(model)
        autocast = self._autocast
        if autocast is None or autocast.device != device_type:
            autocast = self._autocast = torch.autocast(device_type, dtype=self.dtype)
        if self.dtype is torch.float16 and (self.scaler is None or self.scaler._device != device_type):
            self.scaler = torch.amp.GradScaler(device_type)
            if self._saved is not None:
                self.scaler.load_state_dict(self._saved)
                self._saved = None
        return autocast

    def resolve_conflict(self, other: Callback) -> Any:
        if isinstance(other, MixedPrecision):
            return Unresolvable()
        if isinstance(other, ToDevice):
            return RunFirst(other)
        # One answer per pair, for every event where both write: they can only meet where this
        # callback writes, at BackwardEnd (unscaling must come first) and BackwardBegin (the
        # loss is scaled last). A float16 pair that needs both orders cannot be built.
        unscaling = access_at(other, BackwardEnd, TrainingPhase)
        after_unscaling = unscaling is not None and any(overlaps(p, ("model",)) or overlaps(p, _LOSS) for p in unscaling.writes)
        scaling = access_at(other, BackwardBegin, TrainingPhase)
        before_scaling = scaling is not None and any(overlaps(p, _LOSS) for p in scaling.writes)
        if after_unscaling and before_scaling and self.dtype is torch.float16:
            raise ConflictError(_BOTH_ORDERS.format(other=type(other).__name__))
        if after_unscaling:
            return RunFirst(self)
        if before_scaling:
            return RunFirst(other)
        return NotImplemented

    def reset(self) -> None:
        """Keeps the float16 ``GradScaler``'s scale across fits on purpose: like the optimizer's
        state, it is calibrated to the model, and a fresh one would skip steps to find it again."""

    def state_dict(self) -> dict[str, Any]:
        if self.dtype is not torch.float16:
            return {}
        scaler = self.scaler.state_dict() if self.scaler is not None else self._saved
        return {"scaler": dict(scaler)} if scaler else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) - {"scaler"} or (state and self.dtype is not torch.float16):
            raise ValueError(
                f"MixedPrecision({self.dtype}).load_state_dict expects what state_dict returned for "
                f"the same dtype ({{'scaler': ...}} for float16, {{}} for bfloat16); got {sorted(state)}."
            )
        if "scaler" in state:
            if self.scaler is not None:
                self.scaler.load_state_dict(state["scaler"])
            else:
                self._saved = dict(state["scaler"])
        else:  # saved before any scaler existed: the next fit starts a fresh one
            self.scaler, self._saved = None, None


def _autocast_available(device_type: str) -> bool:
    try:
        return torch.amp.is_autocast_available(device_type)
    except RuntimeError:  # not a device type at all
        return False


def _device_type(model: torch.nn.Module) -> str:
    for tensor in model.parameters():
        return tensor.device.type
    return "cpu"
