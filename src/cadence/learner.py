"""The Learner: model, loss, optimizer, data and callbacks, and the loop that runs them."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch

from cadence.batches import BatchAdapter
from cadence.callback import Callback
from cadence.checkpointing.files import Checkpoint
from cadence.checkpointing.resume import FitRun
from cadence.checkpointing.saver import check_savers
from cadence.checkpointing.weights import load_weights
from cadence.inputs.data import Data, check_pair, own_data
from cadence.inputs.diagnostics import check_data
from cadence.distributed.strategy import Strategy, resolve_strategy
from cadence.errors import CancelBatch, CancelEpoch, CancelFit, CancelSignal
from cadence.events import Event, FitBegin, FitEnd
from cadence.executors import Executor, SerialExecutor
from cadence.fit_result import FitResult, fit_result, metric_lengths
from cadence.graph import Plan
from cadence.graph.installed import InstalledCallbacks, check_callbacks, missing_defaults
from cadence.inference import gather, validate
from cadence.lr_finder import LRFinderResult, lr_find
from cadence.phases import Phase, TrainingPhase, ValidationPhase, scope_error
from cadence.lifecycle.resets import fit_ended, joined_during_fit, reset_for_fit
from cadence.run_limits import RunLimits, running
from cadence.state import Batch, CallbackState, clear_batch

__all__ = ["Learner"]

log = logging.getLogger(__name__)

FIT_PHASE = Phase()
TRAINING = TrainingPhase()
VALIDATION = ValidationPhase()
_FIT_END = FitEnd()


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
        self.data = None if data is None else check_pair(data, "Learner(data=...)")
        self.executor = SerialExecutor() if executor is None else executor
        self.adapter = BatchAdapter() if adapter is None else adapter
        self._batch = Batch()
        self._cbstate = CallbackState()
        self._fit_run: FitRun | None = None  # while fit runs: it refuses a change of the saver
        self._strategy = strategy = resolve_strategy(strategy)
        self._installed = InstalledCallbacks(
            self,
            check=self._check_change,
            localize=None if strategy is None else strategy.localize,
            runs_here=None if strategy is None else strategy.runs_init,
        )
        self._plans = self._installed.plans  # one dict, updated in place: fire() looks plans up in it
        chosen = check_callbacks(callbacks)
        if default_callbacks:
            chosen += missing_defaults(chosen)
        if strategy is not None:
            strategy.attach(self)
            chosen += strategy.added_callbacks(chosen)
        self._installed.install(chosen, joining=chosen)

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
        return self._installed.callbacks

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
        train, valid = own_data(self.data, "fit", "both") if data is None else check_pair(data, "fit(data=...)")
        if self._strategy is not None:  # shard first: limits count each process's batches
            train, valid = self._strategy.prepare_fit(self, train, valid)
        limits = RunLimits.check(limit_batches, fast_dev_run, overfit_batches, resume)
        n_epochs, train, valid = limits.apply(n_epochs, train, valid)
        with running(self._installed, limits.callbacks(self.callbacks)):
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
            self.fire(FitBegin(n_epochs, (train, valid), self._installed.run_order(), resume), FIT_PHASE)
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
        return validate(self, own_data(self.data, "validate", "validation") if data is None else data)

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
        return gather(self, own_data(self.data, "get_preds", "validation") if data is None else data, concat=concat)

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
        data = own_data(self.data, "lr_find", "training") if data is None else data
        return lr_find(self, data, start_lr=start_lr, end_lr=end_lr, num_it=num_it, stop_div=stop_div)

    def fire(self, event: Event, phase: Phase) -> None:
        """Run the handlers of (event, phase). Phases call this; so may custom phases."""
        try:
            plan = self._plans[phase.__class__][event.__class__]
        except KeyError:
            raise self._installed.not_fired(event, phase) from None
        if plan is not None:
            self._run(plan, event, phase)

    # ---- callbacks --------------------------------------------------------------------------

    def add_callback(self, callback: Callback) -> None:
        """Add a callback and rebuild the plans; on error the learner is left unchanged."""
        self._installed.add(callback)
        self._joined([callback])

    def remove_callback(self, target: Callback | type[Callback]) -> Callback:
        """Remove ``target`` (an instance, or the first callback of a type) and return it."""
        return self._installed.remove(target)

    def replace_callback(self, callback: Callback) -> Callback | None:
        """Put ``callback`` in place of the first callback of its type and return the old one,
        or add it and return None when there is none. Runs the new callback's ``init``."""
        old = self._installed.replace(callback)
        self._joined([callback])
        return old

    def get_callback(self, cls: type[Callback]) -> Callback | None:
        """Return the first callback that is an instance of ``cls``, or None."""
        return self._installed.get(cls)

    def explain(self, event: type[Event] | None = None, phase: type[Phase] | Phase | None = None) -> str:
        """Each non-empty plan in firing order, handlers numbered, with the reason for every
        edge into a handler. ``event`` and ``phase`` (classes) narrow the output."""
        return self._installed.explain(event, phase)

    def plans(self, event: type[Event] | None = None, phase: type[Phase] | Phase | None = None) -> list[Plan]:
        """The non-empty plans ``explain()`` shows, in firing order (``cadence.graph.render``
        draws them)."""
        return self._installed.non_empty(event, phase)

    # ---- internals --------------------------------------------------------------------------

    def _check_change(self, callbacks: Sequence[Callback]) -> None:
        check_savers(callbacks)
        if self._fit_run is not None:
            self._fit_run.check_callbacks(callbacks)

    def _joined(self, joining: Sequence[Callback]) -> None:
        if self._fit_run is not None:  # joined during a fit: reset as at the start of one
            joined_during_fit(self, joining)

    def _ensure_plans(self, phase: Phase) -> None:
        if not isinstance(phase, Phase):
            raise TypeError(f"Expected a phase such as TrainingPhase(); got {type(phase).__name__}.")
        if not isinstance(self._batch, phase.batch_type):  # a custom phase's has more fields
            self._batch = phase.batch_type()
            self._installed.rebuild_views()
        self._installed.ensure_phase(type(phase))

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
        """Every callback's ``teardown``: a failure is a note on ``pending``, or raised when
        nothing is pending. Then the batch and the adapter let go of the last batch's tensors
        (activations, on a GPU)."""
        failed = self._installed.tear_down(pending)
        if clear:
            clear_batch(self._batch)
            self.adapter.clear()
        if failed is not None:
            raise failed

    def __repr__(self) -> str:
        names = ", ".join(type(cb).__name__ for cb in self.callbacks)
        return f"Learner({type(self.model).__name__}, callbacks=[{names}])"
