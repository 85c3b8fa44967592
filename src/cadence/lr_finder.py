"""The learning-rate finder: fastai's sweep, run in a phase of its own and undone afterwards.

``learner.lr_find()`` trains on the training data with a learning rate that grows exponentially
from ``start_lr`` to ``end_lr`` over ``num_it`` batches (``lr_i = start_lr * (end_lr /
start_lr) ** (i / num_it)``, fastai's ``SchedExp``), records the loss smoothed as fastai does
(an exponential moving average with ``beta = 0.98``, debiased), and stops early once the
smoothed loss exceeds four times its minimum (divergence). Then the model's weights and
buffers, its gradients and train/eval mode, the optimizer's state and hyperparameters (kept on
the CPU meanwhile, not in device memory), every callback's ``state_dict()`` (a
``MixedPrecision`` loss scale, ``Recorder``'s counts) and the RNGs (Python's, NumPy's, torch's,
and the data's generators) are put back exactly as they were, so that a ``fit`` after it runs as
it would have without it. The suggestion is fastai's ``valley``: the learning rate at about half
of the longest stretch over which the loss keeps falling, leaving out the first tenth and the
last five points, and everything from the first NaN on.

Where it differs from fastai's ``LRFinder``:

- a NaN smoothed loss stops the sweep too (with ``stop_div``); fastai's ``loss > 4 * best``
  test is False for NaN, so its sweep runs on;
- ``num_it`` below 2 is an error; fastai raises any value below 6 to 6 without a word;
- where fastai's ``valley`` index comes out as -1 (the longest falling stretch is the first
  two points), which Python reads as the last point, the highest learning rate, cadence takes
  the first point;
- nothing is saved to disk: fastai saves the model to a temporary file and loads it back.

In a process group of several ranks (torchrun, ``cadence.distributed.launch``) call it on every
rank: the ranks sweep together (a ``DataParallel`` learner through DDP), each batch's loss is
averaged over them, and every rank stops at the same batch with the same suggestion.
``validate``, ``predict`` and ``get_preds``, by contrast, run on each rank alone, with no
collective, so one rank may call them by itself.

The sweep runs in ``LRFinderPhase``, a sibling of ``TrainingPhase``: handlers registered for
``TrainingPhase`` (``Scheduler``, ``EarlyStopping``, ``Checkpointer``, ``GradientClipping``,
``GradientAccumulation``, your training callbacks) do not run during it, and handlers for every
phase do (``ToDevice``, ``MixedPrecision``, ``Recorder``, ``ProgressPrinter``; ``Metrics`` does
not track the sweep).
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast

import torch
import torch.distributed as dist

from cadence.batches import map_tensors
from cadence.distributed.group import all_reduce_sum
from cadence.errors import CadenceError, CancelEpoch
from cadence.events import Event
from cadence.graph.placement import runs_here
from cadence.inference import Runner, rng_kept
from cadence.lifecycle.loads import uncounted
from cadence.phases import Loop, Phase, TrainingPhase

__all__ = ["LRFinderPhase", "LRFinderResult", "lr_find", "valley"]

BETA = 0.98  # fastai's smoothing of the recorded loss
DIVERGENCE = 4.0  # stop once the smoothed loss exceeds this multiple of its minimum
# TrainingPhase.step uses its phase only to fire the events and to name it in errors.
_training_step = cast(Callable[[Phase, Loop, object], None], TrainingPhase.step)


@dataclass(frozen=True)
class LRFinderResult:
    """What ``lr_find`` found.

    Attributes:
        lrs: The learning rate of each recorded batch.
        losses: The smoothed loss after each of those batches.
        suggestion: fastai's ``valley`` suggestion, within ``[lrs[0], lrs[-1]]``.
        diverged: Whether the sweep stopped early because the loss diverged.
    """

    lrs: list[float]
    losses: list[float]
    suggestion: float
    diverged: bool

    def plot(self, *, skip_end: int = 5, ax: Any = None) -> Any:
        """Plot the smoothed loss against the learning rate (log scale), the suggestion marked,
        leaving out the last ``skip_end`` points as fastai does; return the matplotlib ``Axes``.

        Raises:
            ImportError: matplotlib is not installed; the message says how to install it.
        """
        try:
            import matplotlib.pyplot as plt
        except ImportError as error:
            raise ImportError(
                "LRFinderResult.plot() needs matplotlib: pip install 'cadence[plots]' (or "
                "pip install matplotlib). The values are in result.lrs and result.losses."
            ) from error
        if ax is None:
            _, ax = plt.subplots()
        end = len(self.lrs) - skip_end if len(self.lrs) > skip_end else len(self.lrs)
        ax.plot(self.lrs[:end], self.losses[:end])
        ax.axvline(self.suggestion, color="tab:red", linestyle="--", label=f"valley {self.suggestion:.2e}")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("loss (smoothed)")
        ax.legend()
        return ax


@dataclass(eq=False)
class _Sweep:
    """The schedule and the record of one sweep; ``record`` ends the epoch when it is over."""

    start_lr: float
    end_lr: float
    num_it: int
    stop_div: bool
    ranks: int = 1  # the processes sweeping together (a distributed learner's world size)
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    diverged: bool = False
    _average: float = 0.0
    _best: float = math.inf

    def next_lr(self) -> float:
        return float(self.start_lr * (self.end_lr / self.start_lr) ** (len(self.lrs) / self.num_it))

    def record(self, lr: float, loss: Any) -> None:
        value = float(loss)
        if self.ranks > 1:  # every rank records the mean, so all stop at the same batch
            value = all_reduce_sum([value])[0] / self.ranks
        self._average = BETA * self._average + (1 - BETA) * value
        smoothed = self._average / (1 - BETA ** (len(self.lrs) + 1))
        self.lrs.append(lr)
        self.losses.append(smoothed)
        self._best = min(self._best, smoothed)
        if self.stop_div and (math.isnan(smoothed) or smoothed > DIVERGENCE * self._best):
            self.diverged = True
            raise CancelEpoch(f"lr_find: the loss diverged at lr={lr:.3g}")
        if len(self.lrs) >= self.num_it:
            raise CancelEpoch("lr_find: the sweep is complete")


@dataclass(frozen=True)
class LRFinderPhase(Phase):
    """The learning-rate sweep: ``TrainingPhase``'s step at the sweep's learning rate, in a
    phase of its own so that handlers registered for ``TrainingPhase`` do not run.

    Events, in order, as in ``TrainingPhase``: ``EpochBegin``, per batch ``BatchBegin``,
    ``LossBegin``, ``BackwardBegin``, ``BackwardEnd``, ``BatchEnd``, then ``EpochEnd``. Before
    each batch every param group's ``lr`` is set to the sweep's next value. Run it with
    ``learner.lr_find()``, which makes the sweep and undoes the training afterwards.
    """

    name: ClassVar[str] = "lr_find"
    events: ClassVar[tuple[type[Event], ...]] = TrainingPhase.events
    sweep: _Sweep | None = field(default=None, compare=False, repr=False)

    def epoch_context(self, loop: Loop) -> contextlib.AbstractContextManager[None]:
        loop.model.train()
        return contextlib.nullcontext()

    def step(self, loop: Loop, batch: object) -> None:
        sweep = self.sweep
        if sweep is None:
            raise CadenceError("LRFinderPhase runs a sweep that learner.lr_find() makes; call learner.lr_find().")
        lr = sweep.next_lr()
        for group in loop.optimizer.param_groups:
            group["lr"] = lr
        _training_step(self, loop, batch)
        sweep.record(lr, loop.batch.loss)


def lr_find(
    learner: Runner,
    data: Iterable[Any],
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_it: int = 100,
    stop_div: bool = True,
) -> LRFinderResult:
    """Sweep the learning rate over ``num_it`` batches of ``data`` (cycled when shorter), then
    restore the model, the optimizer and the RNGs; see the module docstring.

    Raises:
        ValueError: bad arguments, naming what is expected.
        CadenceError: no batch completed.
    """
    for name, value in (("start_lr", start_lr), ("end_lr", end_lr)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
            raise ValueError(f"lr_find({name}=...) expects a positive number, e.g. {name}=1e-7; got {value!r}.")
    if not start_lr < end_lr:
        raise ValueError(
            f"lr_find(start_lr={start_lr!r}, end_lr={end_lr!r}): the sweep rises, so start_lr must be "
            f"below end_lr, e.g. lr_find(start_lr=1e-7, end_lr=10)."
        )
    if isinstance(num_it, bool) or not isinstance(num_it, int) or num_it < 2:
        raise ValueError(f"lr_find(num_it=...) expects an int >= 2 (fastai uses 100); got {num_it!r}.")
    if not isinstance(stop_div, bool):
        raise TypeError(f"lr_find(stop_div=...) is True (stop once the loss diverges) or False; got {stop_div!r}.")
    ranks = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    sweep = _Sweep(float(start_lr), float(end_lr), num_it, stop_div, ranks)
    with _restored(learner, data):
        learner.epoch(LRFinderPhase(sweep), _Cycled(data, num_it))
    if not sweep.lrs:
        raise CadenceError("lr_find(): no batch completed (every one was cancelled); nothing to suggest.")
    return LRFinderResult(list(sweep.lrs), list(sweep.losses), valley(sweep.lrs, sweep.losses, num_it), sweep.diverged)


def valley(lrs: list[float], losses: list[float], num_it: int) -> float:
    """fastai's ``valley`` suggestion: find the longest run of points along which the loss keeps
    decreasing (a longest decreasing subsequence), and take the learning rate at about half of
    it (a third plus a sixth), after leaving out the first ``num_it // 10`` and the last five
    points and anything from the first NaN on. Where fastai's index would be -1 (its last
    point), this takes the first.

    Example:
        >>> lrs = [10.0 ** (k / 4 - 6) for k in range(24)]
        >>> losses = [2.0] * 4 + [2.0 - k / 10 for k in range(12)] + [1.0 + k for k in range(8)]
        >>> f"{valley(lrs, losses, 24):.1e}"
        '1.8e-04'
    """
    points = list(zip(lrs, losses))
    trimmed = points[num_it // 10 : -5]
    if len(trimmed) < 2:  # an early divergence: use what there is
        trimmed = points
    finite = []
    for lr, loss in trimmed:
        if math.isnan(loss):
            break
        finite.append((lr, loss))
    if len(finite) < 2:
        return (finite or points)[0][0]
    values = [loss for _, loss in finite]
    runs = [1] * len(values)  # longest decreasing run ending at each point
    start = end = 0
    for i in range(1, len(values)):
        for j in range(i):
            if values[i] < values[j] and runs[i] < runs[j] + 1:
                runs[i] = runs[j] + 1
        if runs[i] > runs[end]:
            end, start = i, i - runs[i]
    third = (end - start) / 3  # fastai's arithmetic: start is one before the run's first point
    return finite[max(start + int(third) + int(third / 2), 0)][0]


class _Cycled:
    """``num_it`` batches of ``data``, iterating it again whenever it runs out."""

    def __init__(self, data: Iterable[Any], num_it: int) -> None:
        self.data, self.num_it = data, num_it

    def __len__(self) -> int:
        return self.num_it

    def __iter__(self) -> Iterator[Any]:
        given = 0
        while given < self.num_it:
            before = given
            for batch in self.data:
                yield batch
                given += 1
                if given >= self.num_it:
                    return
            if given == before:
                if not given:
                    raise CadenceError("lr_find(): the training data yields no batches.")
                return  # a one-shot iterator, used up


@contextlib.contextmanager
def _restored(learner: Runner, data: Iterable[Any]) -> Iterator[None]:
    """Put back, exactly, what a sweep changes: weights and buffers, gradients, train/eval mode,
    the optimizer's state and hyperparameters, the callbacks' states, and the RNGs (the data's
    generators included)."""
    model, optimizer, callbacks = learner.model, learner.optimizer, learner.callbacks
    # Copies on the CPU: the sweep itself needs the device memory. The weights stay in the
    # state_dict's own OrderedDict (its _metadata says how modules load them).
    weights = model.state_dict()
    for key, value in weights.items():
        weights[key] = _cpu_copy(value)
    grads = [None if p.grad is None else _cpu_copy(p.grad) for p in model.parameters()]
    modes = [module.training for module in model.modules()]
    optimizer_state = map_tensors(_cpu_copy, optimizer.state_dict())
    callbacks = tuple(cb for cb in callbacks if runs_here(learner, cb))  # rank-zero ones: on rank 0
    callback_states = [copy.deepcopy(callback.state_dict()) for callback in callbacks]
    try:
        with rng_kept(data):
            yield
    finally:
        # The sweep's gradients and optimizer state go first, so that the device holds one set.
        for param in model.parameters():
            param.grad = None
        optimizer.state.clear()
        with torch.no_grad():
            model.load_state_dict(weights)  # copied into the parameters, on their device
        for param, grad in zip(model.parameters(), grads):
            param.grad = None if grad is None else grad.to(param.device)
        for module, mode in zip(model.modules(), modes):
            module.training = mode
        optimizer.load_state_dict(optimizer_state)
        with uncounted():  # as they were: not state loaded for the next fit (cadence.lifecycle.resets)
            for callback, state in zip(callbacks, callback_states):
                callback.load_state_dict(state)


def _cpu_copy(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to("cpu", copy=True)
