"""LogConfig: the run's configuration, once at ``FitBegin``: model, optimizer, callbacks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cadence import READ
from cadence.events import FitBegin
from cadence.loggers.backend import Backend
from cadence.loggers.logger import LoggerCallback
from cadence.loggers.values import Hyperparameters, Text

__all__ = ["LogConfig"]

_SCALARS = (bool, int, float, str)  # what hyperparameter views take


class LogConfig(LoggerCallback):
    """Writes the run's configuration once, at ``FitBegin`` of its first fit, for the whole run:

    - ``config`` (text, Markdown): the model with its parameter counts, the optimizer and
      its param groups, and the callbacks in run order;
    - hyperparameters: the optimizer's class and first param group's numbers, the epochs,
      the parameter count, and ``hparams``; shown against the ``cbstate.metrics`` keys of
      the training and validation phases (TensorBoard's HPARAMS tab, MLflow's parameters).

    Args:
        *backends: The backends to write to.
        hparams: Your own hyperparameters, name -> bool, int, float or str (e.g. the batch
            size or the dropout rate).

    Example:
        >>> import tempfile
        >>> from cadence import Recorder
        >>> from cadence.loggers import TensorBoardLogger
        >>> from cadence.testing import make_test_learner
        >>> from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        >>> folder = tempfile.mkdtemp()
        >>> _ = make_test_learner(LogConfig(TensorBoardLogger(folder), hparams={"batch_size": 8}), Recorder()).fit(1)
        >>> text = EventAccumulator(folder).Reload().Tensors("config")[0].tensor_proto.string_val[0].decode()
        >>> print(text.splitlines()[0])
        ## Model: Linear (1 parameters, 1 trainable)
    """

    state_access = {"model": READ, "optimizer": READ, "cbstate": READ}

    def __init__(self, *backends: Backend, hparams: Mapping[str, Any] | None = None) -> None:
        super().__init__(backends)
        hparams = dict(hparams or {})
        bad = {k: v for k, v in hparams.items() if not isinstance(k, str) or not isinstance(v, _SCALARS)}
        if bad:
            raise TypeError(
                f"LogConfig(hparams=...) takes names (str) -> bool, int, float or str; got "
                f"{', '.join(f'{k!r}: {type(v).__name__}' for k, v in bad.items())}. Write e.g. "
                f'hparams={{"batch_size": 32, "dropout": 0.1}}.'
            )
        self.hparams = hparams
        self._logged = False  # this run's configuration is written

    def reset(self) -> None:
        """Reused in another learner: fresh logs, and that run's configuration to write."""
        super().reset()
        self._logged = False

    def began(self, event: FitBegin, learner: Any) -> None:
        if self._logged:
            return
        self._logged = True
        model, optimizer = learner.model, learner.optimizer
        total = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        lines = [
            f"## Model: {type(model).__name__} ({total:,} parameters, {trainable:,} trainable)",
            "",
            *(f"    {line}" for line in repr(model).splitlines()),
            "",
            f"## Optimizer: {type(optimizer).__name__}",
            "",
            *(f"- group {i} ({len(g['params'])} tensors): {_show(h)}" for i, (g, h) in enumerate(zip(optimizer.param_groups, groups))),
            "",
            f"## Callbacks, in run order ({event.n_epochs} epochs)",
            "",
            *(f"{i}. {cb!r}" for i, cb in enumerate(event.callbacks, start=1)),
        ]
        values: dict[str, bool | int | float | str] = {"optimizer": type(optimizer).__name__}
        if groups:
            for name, value in groups[0].items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):  # lr, momentum, eps, ...
                    values[name] = value
                elif isinstance(value, (tuple, list)) and name == "betas" and len(value) == 2:
                    values["beta1"], values["beta2"] = float(value[0]), float(value[1])
        values.update(n_epochs=event.n_epochs, parameters=total, **self.hparams)
        cbstate = learner.cbstate
        # The phases this fit runs: Metrics plans keys for every phase class defined so far.
        phases = ("train",) if event.data is None or event.data[1] is None else ("train", "valid")
        keys = cbstate.metrics.keys if "metrics" in cbstate else ()
        metrics = tuple(sorted(k for k in keys if k.partition("/")[0] in phases))
        self.log([Text("config", "\n".join(lines)), Hyperparameters(values, metrics)], learner, None, deferred=True)


def _show(group: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in group.items() if v is not None)
