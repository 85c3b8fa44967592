"""The Learner: model, loss, optimizer, data and callbacks, and the loop that runs them."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch

from cadence.access import LearnerView
from cadence.batches import BatchAdapter
from cadence.callback import Callback, Handler, handler_access_label
from cadence.diagnostics import check_data
from cadence.distributed.strategy import Strategy, resolve_strategy
from cadence.errors import CadenceError, CancelBatch, CancelEpoch, CancelFit, CancelSignal
from cadence.events import Event, FitBegin, FitEnd
from cadence.executors import Executor, SerialExecutor
from cadence.fit_result import FitResult, fit_result, metric_lengths
from cadence.graph import CallbackGraph, Plan
from cadence.inference import gather, validate
from cadence.lr_finder import LRFinderResult, lr_find
from cadence.phases import Phase, TrainingPhase, ValidationPhase, scope_error
from cadence.checkpointing.files import Checkpoint
from cadence.checkpointing.resume import FitRun
from cadence.checkpointing.saver import check_savers
from cadence.checkpointing.weights import load_weights
from cadence.resets import fit_ended, joined_during_fit, reset_for_fit
from cadence.run_limits import RunLimits
from cadence.state import Batch, CallbackState, clear_batch

__all__ = ["Learner"]

log = logging.getLogger(__name__)

FIT_PHASE = Phase()
TRAINING = TrainingPhase()
VALIDATION = ValidationPhase()
_FIT_END = FitEnd()

Data = tuple[Iterable[Any], Iterable[Any] | None]
PhasePlans = dict[type[Event], Plan | None]
HandlerViews = Sequence[Mapping[Handler, LearnerView]]
Views = tuple[list[LearnerView], list[dict[Handler, LearnerView]]]


class Learner:
    """Trains ``model`` with ``loss_fn`` and ``optimizer``, running ``callbacks`` at each event.

    Args:
        model: The ``torch.nn.Module`` to train.
        loss_fn: ``loss_fn(y_pred, y)`` returning a scalar tensor.
        optimizer: A ``torch.optim.Optimizer``; ``None`` means ``Adam(model.parameters())``.
        data: ``(train, valid)``, each an iterable of ``(x, y)`` batches; ``valid`` may be None.
            Other batches (dicts, several inputs) need an ``adapter``.
        callbacks: Callback instances. Their order is kept wherever their declarations do not
            order them.
        executor: Runs each event's handlers; ``SerialExecutor()`` by default.
        default_callbacks: Add ``Recorder()``, ``Metrics()``, ``ProgressPrinter()``,
            ``MetricsPrinter()`` and ``StopOnNaNLoss()`` (after the user's callbacks), each unless
            a callback of its type is already there. ``False`` adds none.
        adapter: How a batch is unpacked, the model called and the loss computed
            (``cadence.batches``); ``BatchAdapter()``, for ``(x, y)`` pairs, by default.
        strategy: How to train across processes: ``"auto"`` (the default) trains with
            ``cadence.distributed.DataParallel()`` when the process was started as one of
            several (by torchrun or ``cadence.distributed.launch``) and alone otherwise; a
            strategy such as ``DataParallel(...)``; or None, never distributed.

    The callbacks are validated and ordered here: a ``ConflictError``, ``CycleError``,
    ``MissingStateError`` or ``DeclarationError`` comes from the constructor (or
    ``add_callback``), never from the middle of training.

    Example:
        >>> import torch
        >>> from cadence import Learner
        >>> model = torch.nn.Linear(4, 1)
        >>> batches = [(torch.randn(8, 4), torch.randn(8, 1)) for _ in range(4)]
        >>> learner = Learner(model, torch.nn.functional.mse_loss, data=(batches, batches))
        >>> learner.fit(2)  # doctest: +ELLIPSIS
        train epoch 1: 4/4 batches, last batch loss ...
        ...
        >>> len(learner.cbstate.metrics.epochs["valid/loss"])
        2
    """

    def __init__(
        self,
        model: torch.nn.Module,
        loss_fn: Callable[..., Any],
        optimizer: torch.optim.Optimizer | None = None,
        *,
        data: Data | None = None,
        callbacks: Iterable[Callback] = (),
        executor: Executor | None = None,
        default_callbacks: bool = True,
        adapter: BatchAdapter | None = None,
        strategy: Strategy | str | None = "auto",
    ) -> None:
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"Learner(model=...) expects a torch.nn.Module; got {type(model).__name__}.")
        if not callable(loss_fn):
            raise TypeError(
                f"Learner(loss_fn=...) expects a callable loss_fn(y_pred, y), e.g. "
                f"torch.nn.functional.cross_entropy; got {type(loss_fn).__name__}."
            )
        if optimizer is None:
            optimizer = torch.optim.Adam(model.parameters())
        elif not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"Learner(optimizer=...) expects a torch.optim.Optimizer, e.g. "
                f"torch.optim.SGD(model.parameters(), lr=0.1), or None for Adam; got "
                f"{type(optimizer).__name__}."
            )
        self.model = model
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.data = None if data is None else _check_data(data, "Learner(data=...)")
        self.executor = SerialExecutor() if executor is None else executor
        self.adapter = BatchAdapter() if adapter is None else adapter
        self._batch = Batch()
        self._cbstate = CallbackState()
        self._callbacks: tuple[Callback, ...] = ()
        self._plans: dict[type[Phase], PhasePlans] = {}
        self._phases: list[type[Phase]] = [Phase, TrainingPhase, ValidationPhase]
        self._fit_run: FitRun | None = None  # while fit runs: it refuses a change of the saver
        self._strategy = resolve_strategy(strategy)
        chosen = _check_callbacks(callbacks)
        if default_callbacks:
            chosen += [cb for cb in _default_callbacks() if not any(isinstance(c, type(cb)) for c in chosen)]
        if self._strategy is not None:
            self._strategy.attach(self)
            chosen += self._strategy.added_callbacks(chosen)
        self._install(chosen, joining=chosen)

    # ---- state ------------------------------------------------------------------------------

    @property
    def batch(self) -> Batch:
        """The batch being processed (``x``, ``y``, ``y_pred``, ``loss``)."""
        return self._batch

    @property
    def cbstate(self) -> CallbackState:
        """State shared between callbacks (``history``, ``metrics``, ...)."""
        return self._cbstate

    @property
    def callbacks(self) -> tuple[Callback, ...]:
        """The callbacks, in the order given (defaults last); run order comes from ``explain()``."""
        return self._callbacks

    @property
    def strategy(self) -> Strategy | None:
        """How this learner trains across processes (``DataParallel``), or None."""
        return self._strategy

    @property
    def adapter(self) -> BatchAdapter:
        """How a batch is unpacked, the model called and the loss computed
        (``cadence.batches``); replaceable between events."""
        return self._adapter

    @adapter.setter
    def adapter(self, adapter: BatchAdapter) -> None:
        if not isinstance(adapter, BatchAdapter):
            raise TypeError(
                f"Learner(adapter=...) expects a BatchAdapter, e.g. DictBatches(target=\"labels\"), "
                f"or a subclass of cadence.batches.BatchAdapter; got {type(adapter).__name__}."
            )
        self._adapter = adapter

    @property
    def executor(self) -> Executor:
        """Runs each event's handlers; replaceable at any time between events."""
        return self._executor

    @executor.setter
    def executor(self, executor: Executor) -> None:
        if not callable(getattr(executor, "run", None)):
            raise TypeError(
                f"Learner(executor=...) expects an object with run(plan, event, phase), such as "
                f"SerialExecutor(); got {type(executor).__name__}."
            )
        self._executor = executor
        self._run = executor.run

    # ---- training ---------------------------------------------------------------------------

    def fit(
        self,
        n_epochs: int,
        data: Data | None = None,
        *,
        resume: str | os.PathLike[str] | None = None,
        limit_batches: int | None | tuple[int | None, int | None] = None,
        fast_dev_run: bool = False,
        overfit_batches: int | None = None,
    ) -> FitResult:
        """Train for ``n_epochs``, validating after each training epoch when there is
        validation data.

        Args:
            n_epochs: How many epochs the run has in total (a resumed run counts the epochs
                before its checkpoint too).
            data: ``(train, valid)`` for this fit instead of the learner's ``data``.
            resume: Continue from a checkpoint: ``"latest"`` (the newest intact checkpoint in
                the ``Checkpointer``'s folder; none yet starts from the beginning), a
                checkpoint's path, or a folder of checkpoints. Training continues at the batch
                after the checkpoint, with the same data order (see ``cadence.checkpointing.resume``).
            limit_batches: At most this many batches per epoch, or ``(train, valid)`` counts
                (None: all); for quick runs (see ``cadence.run_limits``).
            fast_dev_run: One epoch of one training and one validation batch, without the
                callbacks that write files (``writes_files = True``, e.g. ``Checkpointer``)
                and those that read what only they write.
            overfit_batches: Lightning's: train on the first N training batches and validate
                on the first N validation batches every epoch, in order (a shuffling
                DataLoader is taken without shuffling).

        Returns:
            A ``FitResult``: ``history``, the epoch metrics this fit recorded per key, and
            ``stopped``, the ``CancelFit`` that ended training early or None (``reason`` says
            why). Once ``FitEnd`` has run, ``learner.batch`` is reset, so that the last batch's
            tensors do not outlive the fit.

        Raises:
            CheckpointError: the checkpoint is missing, corrupt or does not fit this learner.
            KeyboardInterrupt, SystemExit: after Ctrl-C or SIGTERM stopped training (with a
                ``Checkpointer``, once a checkpoint is saved), and ``FitEnd`` has run.
        """
        if isinstance(n_epochs, bool) or not isinstance(n_epochs, int) or n_epochs < 0:
            raise ValueError(f"fit(n_epochs) expects a non-negative int; got {n_epochs!r}.")
        train, valid = self._own_data("fit", "both") if data is None else _check_data(data, "fit(data=...)")
        if self._strategy is not None:  # shard first: limits count each process's batches
            train, valid = self._strategy.prepare_fit(self, train, valid)
        limits = RunLimits.check(limit_batches, fast_dev_run, overfit_batches, resume)
        n_epochs, train, valid = limits.apply(n_epochs, train, valid)
        with self._running(limits.callbacks(self._callbacks)):
            return self._fit(n_epochs, train, valid, resume)

    def _fit(
        self, n_epochs: int, train: Iterable[Any], valid: Iterable[Any] | None, resume: str | os.PathLike[str] | None
    ) -> FitResult:
        run = FitRun(self, n_epochs, train, valid is not None, resume)
        self._fit_run = run
        result: CancelFit | None = None
        since: dict[str, int] = {}
        try:
            reset_for_fit(self)
            # Where this fit's epoch values begin, before anything can stop it; a resumed fit's
            # history is the whole run's.
            since = {} if resume is not None else metric_lengths(self._cbstate)
            if self._strategy is not None:
                self._strategy.begin_fit(self, run)
            self.fire(FitBegin(n_epochs, (train, valid), self._run_order(), resume), FIT_PHASE)
            run.fit_began()
            for epoch in range(run.first_epoch, n_epochs):
                self._epoch(TRAINING, run.training_data(epoch))
                if valid is not None:
                    self._epoch(VALIDATION, valid)
        except CancelFit as signal:
            result = signal
            log.info("fit cancelled by %s: %s", signal.origin, signal.reason)
        except (CancelBatch, CancelEpoch) as signal:
            error = scope_error(signal, "at FitBegin")
            self._end_fit(error, run)
            raise error from signal
        except BaseException as exc:
            self._end_fit(exc, run)
            raise
        self._end_fit(None, run)
        return fit_result(self._cbstate, since, run.outcome(result))

    def _end_fit(self, pending: BaseException | None, run: FitRun) -> None:
        run.close()
        self._fit_run = None
        failed: Exception | None = None
        try:
            try:
                self.fire(_FIT_END, FIT_PHASE)
            except CancelSignal as signal:
                raise scope_error(signal, "at FitEnd") from signal
        except Exception as cleanup:
            if pending is None:
                failed = cleanup
            else:
                pending.add_note(f"FitEnd cleanup failed too: {type(cleanup).__name__}: {cleanup}")
        try:
            self._tear_down(pending or failed)
        finally:
            fit_ended(self)
            if self._strategy is not None:
                self._strategy.end_fit(pending)
        if failed is not None:
            raise failed

    def load(self, path: str | os.PathLike[str], *, optimizer: bool = False) -> Checkpoint:
        """Load the model (and with ``optimizer=True`` the optimizer) from the checkpoint at
        ``path``, e.g. ``learner.load(checkpointer.best_path)``; see
        ``cadence.checkpointing.weights.load_weights``. To continue that run instead, use
        ``fit(n_epochs, resume=path)``."""
        return load_weights(self, path, optimizer=optimizer)

    def epoch(self, phase: Phase, data: Iterable[Any]) -> None:
        """Run one epoch of ``phase`` over ``data``, firing its events.

        ``CancelFit`` raised inside propagates to the caller (``fit`` handles it). An epoch of
        ``ValidationPhase()`` is a validation epoch of training: every validation callback
        reacts (``EarlyStopping`` counts it). To evaluate held-out data without changing
        training state, use ``validate(data)``, which runs an ``EvaluationPhase`` epoch.
        """
        with self._entry_point():
            self._epoch(phase, data)

    def _epoch(self, phase: Phase, data: Iterable[Any]) -> None:
        self._ensure_plans(phase)
        check_data(data, "epoch(phase, data): data")
        loop = self if self._strategy is None else self._strategy.epoch_loop(self, phase)
        try:
            phase.run_epoch(loop, data)
        except CancelBatch as signal:
            raise scope_error(signal, f"at EpochBegin or EpochEnd of {type(phase).__name__}") from signal
        if self._strategy is not None:
            self._strategy.epoch_ended(phase)

    def step(self, phase: Phase, batch: object) -> None:
        """Process one ``(x, y)`` batch in ``phase``, firing its batch events, in the phase's
        epoch context (``ValidationPhase``: eval mode, no gradients). ``learner.batch`` keeps
        the batch's state afterwards, for inspection."""
        with self._entry_point(clear=False):
            self._ensure_plans(phase)
            loop = self if self._strategy is None else self._strategy.epoch_loop(self, phase)
            with phase.epoch_context(loop):
                phase.run_step(loop, batch)

    # ---- evaluating, predicting, finding a learning rate (cadence.inference, cadence.lr_finder)

    def validate(self, data: Iterable[Any] | None = None) -> dict[str, float]:
        """Evaluate ``data`` (by default the validation data) without changing training state,
        and return the epoch values ``Metrics`` computed, by metric name (``{"loss": ...}``).

        It runs an ``EvaluationPhase`` epoch: the model in eval mode under ``torch.no_grad()``,
        with the callbacks that handle every phase (``ToDevice``, ``MixedPrecision``,
        ``Metrics``, under ``"eval/..."`` keys) and none of those registered for
        ``TrainingPhase`` or ``ValidationPhase`` (see ``cadence.inference``).
        """
        return validate(self, self._own_data("validate", "validation") if data is None else data)

    def predict(self, data: Iterable[Any], *, concat: bool = True) -> Any:
        """The model's predictions for ``data`` (batches of inputs, or of ``(x, y)``), in eval
        mode under ``torch.no_grad()``, on the CPU, concatenated over the batches (with
        ``concat=False``, a list with one item per batch: for outputs whose shapes differ
        beyond the first dimension, such as sequences of different lengths); the same batch
        callbacks apply as in validation (see ``cadence.inference``)."""
        return gather(self, data, concat=concat)[0]

    def get_preds(self, data: Iterable[Any] | None = None, *, concat: bool = True) -> tuple[Any, Any]:
        """``(predictions, targets)`` for ``data`` (by default the validation data), as
        ``predict`` makes them; ``targets`` is None when the data has none."""
        return gather(self, self._own_data("get_preds", "validation") if data is None else data, concat=concat)

    def lr_find(
        self,
        data: Iterable[Any] | None = None,
        *,
        start_lr: float = 1e-7,
        end_lr: float = 10.0,
        num_it: int = 100,
        stop_div: bool = True,
    ) -> LRFinderResult:
        """fastai's learning-rate finder on ``data`` (by default the training data): an
        exponential sweep from ``start_lr`` to ``end_lr`` over ``num_it`` batches that stops
        when the loss diverges, then the model, the optimizer and the RNGs are restored
        exactly. The result has the ``suggestion`` (fastai's valley) and a ``plot()``."""
        data = self._own_data("lr_find", "training") if data is None else data
        return lr_find(self, data, start_lr=start_lr, end_lr=end_lr, num_it=num_it, stop_div=stop_div)

    def fire(self, event: Event, phase: Phase) -> None:
        """Run the handlers of (event, phase). Phases call this; so may custom phases."""
        try:
            plan = self._plans[phase.__class__][event.__class__]
        except KeyError:
            raise self._not_fired(event, phase) from None
        if plan is not None:
            self._run(plan, event, phase)

    # ---- callbacks --------------------------------------------------------------------------

    def add_callback(self, callback: Callback) -> None:
        """Add a callback and rebuild the plans; on error the learner is left unchanged."""
        (callback,) = _check_callbacks([callback], "add_callback(callback)")
        if any(cb is callback for cb in self._callbacks):
            raise ValueError(f"{callback!r} is already in this learner; add a new instance instead.")
        self._install([*self._callbacks, callback], joining=[callback])

    def remove_callback(self, target: Callback | type[Callback]) -> Callback:
        """Remove ``target`` (an instance, or the first callback of a type) and return it."""
        found = self._find(target)
        if found is None:
            raise ValueError(
                f"No callback {_describe(target)} to remove; the learner has "
                f"{', '.join(type(cb).__name__ for cb in self._callbacks) or 'no callbacks'}."
            )
        self._install([cb for cb in self._callbacks if cb is not found], joining=[])
        return found

    def replace_callback(self, callback: Callback) -> Callback | None:
        """Put ``callback`` in place of the first callback of its type and return the old one,
        or add it and return None when there is none. Runs the new callback's ``init``."""
        (callback,) = _check_callbacks([callback], "replace_callback(callback)")
        if any(cb is callback for cb in self._callbacks):
            raise ValueError(f"{callback!r} is already in this learner; replace with a new instance instead.")
        old = self.get_callback(callback.__class__)  # a throttled Recorder replaces a Recorder
        if old is None:
            self.add_callback(callback)
            return None
        self._install([callback if cb is old else cb for cb in self._callbacks], joining=[callback])
        return old

    def get_callback(self, cls: type[Callback]) -> Callback | None:
        """Return the first callback that is an instance of ``cls``, or None."""
        return next((cb for cb in self._callbacks if isinstance(cb, cls)), None)

    def explain(self, event: type[Event] | None = None, phase: type[Phase] | Phase | None = None) -> str:
        """Each non-empty plan in firing order, handlers numbered, with the reason for every
        edge into a handler. ``event`` and ``phase`` (classes) narrow the output."""
        parts = [plan.describe() for plan in self.plans(event, phase)]
        return "\n\n".join(parts) if parts else "No callback handles these events."

    def plans(self, event: type[Event] | None = None, phase: type[Phase] | Phase | None = None) -> list[Plan]:
        """The non-empty plans ``explain()`` shows, in firing order (``cadence.graph.render``
        draws them)."""
        phase_type = type(phase) if isinstance(phase, Phase) else phase
        found: list[Plan] = []
        last: list[Plan] = []
        for kind in self._phases:
            if phase_type is not None and kind is not phase_type:
                continue
            for evt, plan in self._plans.get(kind, {}).items():
                if plan is not None and plan.calls and (event is None or evt is event):
                    # FitEnd fires after every epoch of every phase.
                    (last if evt is FitEnd else found).append(plan)
        return found + last

    # ---- internals --------------------------------------------------------------------------

    def _install(self, callbacks: Sequence[Callback], joining: Sequence[Callback]) -> None:
        """Validate and plan ``callbacks``; commit only if everything succeeds, then run the
        joining callbacks' ``init`` (producers first)."""
        try:
            check_savers(callbacks)
            if self._fit_run is not None:
                self._fit_run.check_callbacks(callbacks)
            with _collector_paused():
                graph = CallbackGraph(callbacks)
                views, plans = self._plan_all(graph)
        except CadenceError as error:
            error.callbacks = tuple(callbacks)  # `python -m cadence check` checks them all
            raise
        previous = (self._callbacks, self._graph_state())
        self._callbacks, self._graph, self._views, self._plans = tuple(callbacks), graph, views, plans
        joining_ids = {id(cb) for cb in joining}
        try:
            for i in graph.init_order():
                if id(callbacks[i]) in joining_ids and (self._strategy is None or self._strategy.runs_init(callbacks[i])):
                    callbacks[i].init(views[0][i])
        except BaseException as exc:
            self._callbacks = previous[0]
            self._graph, self._views, self._plans = previous[1]
            exc.add_note(f"Raised by {graph.labels[i]}.init; the learner's callbacks are unchanged.")
            raise
        if self._fit_run is not None:  # joined during a fit: reset as at the start of one
            joined_during_fit(self, joining)

    @contextlib.contextmanager
    def _entry_point(self, clear: bool = True) -> Iterator[None]:
        """The end of an entry point that runs events outside ``fit`` (``fit`` has its own, in
        ``_end_fit``): every callback's ``teardown``, however it ends, then (with ``clear``)
        the batch is cleared."""
        try:
            yield
        except BaseException as error:
            self._tear_down(error, clear)
            raise
        self._tear_down(None, clear)

    def _tear_down(self, pending: BaseException | None, clear: bool = True) -> None:
        """Run every callback's ``teardown`` (each one, whatever the others do); a failure is
        a note on ``pending``, or raised when nothing is pending. Then clear the batch and the
        adapter: the last batch's tensors (activations, on a GPU) go now."""
        failed: Exception | None = None
        for label, callback in zip(self._graph.labels, self._callbacks):
            if self._strategy is not None and not self._strategy.runs_init(callback):
                continue  # a rank-zero callback on another rank: it never ran here
            try:
                callback.teardown()
            except Exception as error:
                if pending is None and failed is None:
                    error.add_note(f"Raised by {label}.teardown.")
                    failed = error
                else:
                    (pending or failed).add_note(f"{label}.teardown failed too: {type(error).__name__}: {error}")  # type: ignore[union-attr]
        if clear:
            clear_batch(self._batch)
            self.adapter.clear()
        if failed is not None:
            raise failed

    def _run_order(self) -> tuple[Callback, ...]:
        return tuple(self._callbacks[i] for i in self._graph.init_order())

    def _graph_state(self) -> tuple[Any, Any, Any]:
        return getattr(self, "_graph", None), getattr(self, "_views", ([], [])), self._plans

    def _plan_all(self, graph: CallbackGraph) -> tuple[Views, dict[type[Phase], PhasePlans]]:
        """Views of the learner for ``graph``'s callbacks (one per callback, and one per handler
        that declares its own access), and every known phase's plans with them."""
        views = [LearnerView(self, label, access) for label, access in zip(graph.labels, graph.accesses)]
        handler_views = [
            {h: LearnerView(self, label, access, handler_access_label(label, h)) for h, access in own.items()}
            for label, own in zip(graph.labels, graph.handler_accesses)
        ]
        return (views, handler_views), {kind: self._plans_for(graph, kind, views, handler_views) for kind in self._phases}

    def _ensure_plans(self, phase: Phase) -> None:
        if not isinstance(phase, Phase):
            raise TypeError(f"Expected a phase such as TrainingPhase(); got {type(phase).__name__}.")
        if not isinstance(self._batch, phase.batch_type):
            # A custom phase's batch has more fields. Views hold the batch: rebuild them, and the
            # plans that carry them, from the same graph.
            self._batch = phase.batch_type()
            self._views, self._plans = self._plan_all(self._graph)
        kind = type(phase)
        if kind not in self._plans:
            self._plans[kind] = self._plans_for(self._graph, kind, *self._views)
            self._phases.append(kind)

    @contextlib.contextmanager
    def _running(self, callbacks: Sequence[Callback]) -> Iterator[None]:
        """Run with only ``callbacks`` of the learner's (a fast dev run leaves some out)."""
        if len(callbacks) == len(self._callbacks):
            yield
            return
        everything, state, batch = self._callbacks, self._graph_state(), self._batch
        self._install(callbacks, joining=[])
        try:
            yield
        finally:  # put the plans back as they were, without building (nor checking) again
            self._callbacks = everything
            self._graph, self._views, self._plans = state
            if self._batch is not batch:  # a custom phase's batch: the views hold the batch
                self._views, self._plans = self._plan_all(self._graph)

    def _own_data(self, caller: str, part: str) -> Any:
        """The learner's ``data`` (``part="both"``) or its ``"training"`` or ``"validation"``
        part, for ``caller``, which was given none."""
        own = self.data
        found = own if own is None or part == "both" else own[part == "validation"]
        if found is None:
            given = f"{caller}(n_epochs, data=(train, valid))" if part == "both" else f"{caller}(batches)"
            what = "data" if part == "both" else f"{part} data"
            raise ValueError(
                f"{caller}() has no data: pass it, {given}, or give the learner {what}, "
                f"Learner(..., data=(train, valid)), each an iterable of (x, y) batches (valid may be None)."
            )
        return found

    def _plans_for(
        self,
        graph: CallbackGraph,
        kind: type[Phase],
        views: Sequence[LearnerView],
        handler_views: HandlerViews,
    ) -> PhasePlans:
        plans = _plans_for(graph, kind, views, handler_views)
        if self._strategy is not None:  # each process's copy: rank-zero handlers, agreed stops
            localize = self._strategy.localize
            plans = {event: None if plan is None else localize(plan) for event, plan in plans.items()}
        return plans

    def _find(self, target: Callback | type[Callback]) -> Callback | None:
        if isinstance(target, type):
            return self.get_callback(target)
        return next((cb for cb in self._callbacks if cb is target), None)


    def _not_fired(self, event: Event, phase: Phase) -> CadenceError:
        name = type(phase).__name__
        if type(phase) not in self._plans:
            return CadenceError(
                f"{name} fired {type(event).__name__}, but no plans exist for {name} yet: they are "
                f"built when its epoch starts. Run it with learner.epoch({name}(), data) or "
                f"learner.step({name}(), batch) instead of calling fire() directly."
            )
        return CadenceError(
            f"{name} fired {type(event).__name__}, which is not in {name}.events; add it there so "
            f"that its plan is built."
        )

    def __repr__(self) -> str:
        names = ", ".join(type(cb).__name__ for cb in self._callbacks)
        return f"Learner({type(self.model).__name__}, callbacks=[{names}])"


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    # Building allocates many small, acyclic objects (edges, reasons); with hundreds of
    # callbacks the cyclic collector's full passes over the process made it superlinear.
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _plans_for(
    graph: CallbackGraph, kind: type[Phase], views: Sequence[LearnerView], handler_views: HandlerViews
) -> PhasePlans:
    # Empty batch- and epoch-level plans are stored as None so that firing them costs one
    # lookup. Fit-level plans always reach the executor, so that executors see fit boundaries
    # (a thread pool can shut down at FitEnd, a timer can print its table).
    plans: PhasePlans = {}
    for event in kind.events:
        plan = graph.plan(event, kind, views, handler_views)
        plans[event] = plan if plan.calls or kind is Phase else None
    return plans


def _check_callbacks(callbacks: Iterable[Callback], where: str | None = None) -> list[Callback]:
    if isinstance(callbacks, Callback) or not isinstance(callbacks, Iterable):
        raise TypeError(f"callbacks must be a list of Callback instances, e.g. [Recorder()]; got {callbacks!r}.")
    checked = list(callbacks)
    for i, cb in enumerate(checked):
        name = where or f"callbacks[{i}]"
        if isinstance(cb, type) and issubclass(cb, Callback):
            raise TypeError(f"{name} got the class {cb.__name__}; pass an instance: {cb.__name__}().")
        if not isinstance(cb, Callback):
            raise TypeError(f"{name} got a {type(cb).__name__}, not a Callback; subclass cadence.Callback.")
    for i, cb in enumerate(checked):
        if any(cb is other for other in checked[:i]):
            raise ValueError(f"callbacks[{i}] ({cb!r}) is listed twice; pass each instance once.")
    return checked


def _check_data(data: object, where: str) -> Data:
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise TypeError(
            f"{where} expects (train, valid), each an iterable of (x, y) batches, valid may be None; "
            f"got {type(data).__name__}. For training data alone write data=(train, None)."
        )
    train, valid = data
    for name, part in (("train", train), ("valid", valid)):
        if part is None and name == "valid":
            continue
        check_data(part, f"{where}: {name}")
    return train, valid


def _describe(target: object) -> str:
    return target.__name__ if isinstance(target, type) else repr(target)


def _default_callbacks() -> list[Callback]:
    from cadence.callbacks.metrics import Metrics
    from cadence.callbacks.metrics_printer import MetricsPrinter
    from cadence.callbacks.nan import StopOnNaNLoss
    from cadence.callbacks.progress import ProgressPrinter
    from cadence.callbacks.recorder import Recorder

    return [Recorder(), Metrics(), ProgressPrinter(), MetricsPrinter(), StopOnNaNLoss()]
