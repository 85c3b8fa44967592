"""LogConfig: the configuration text, exactly: the parameter counts, the optimizer's groups,
and the callbacks in run order (not list order)."""

from __future__ import annotations

from pathlib import Path

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cadence import EarlyStopping, Learner, LogConfig, Metrics, Recorder, Scheduler
from cadence.events import FitBegin
from cadence.loggers import TensorBoardLogger
from cadence.schedules import cosine


def test_the_config_text_counts_every_and_the_trainable_parameters_and_lists_the_callbacks_in_run_order(tmp_path: Path) -> None:
    from tensorboard.plugins.hparams import plugin_data_pb2

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    model[0].requires_grad_(False)  # 15 frozen parameters, 4 trainable
    x = torch.randn(16, 4)
    batches = [(x[:8], x[:8].sum(1, keepdim=True)), (x[8:], x[8:].sum(1, keepdim=True))]
    config = LogConfig(TensorBoardLogger(tmp_path), hparams={"batch_size": 8})
    learner = Learner(
        model, torch.nn.functional.mse_loss, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), data=(batches, batches),
        # in list order LogConfig is first: it runs last, after everything it reads is written,
        # and EarlyStopping after the Metrics it reads
        callbacks=[config, EarlyStopping(patience=3), Scheduler(lr=cosine(0.1, 0.01)), Metrics(), Recorder()],
        default_callbacks=False,
    )
    learner.fit(2)
    events = EventAccumulator(str(tmp_path), size_guidance={"tensors": 0}).Reload()
    (text,) = [e.tensor_proto.string_val[0].decode() for e in events.Tensors("config")]
    assert text.splitlines() == [
        "## Model: Sequential (19 parameters, 4 trainable)",
        "",
        "    Sequential(",
        "      (0): Linear(in_features=4, out_features=3, bias=True)",
        "      (1): ReLU()",
        "      (2): Linear(in_features=3, out_features=1, bias=True)",
        "    )",
        "",
        "## Optimizer: SGD",
        "",
        "- group 0 (4 tensors): lr=0.1, momentum=0.9, dampening=0, weight_decay=0, nesterov=False, maximize=False, differentiable=False",
        "",
        "## Callbacks, in run order (2 epochs)",
        "",
        "1. Scheduler(lr=cosine(0.1, 0.01, steps=None), unit='step')",
        "2. Metrics()",
        "3. EarlyStopping()",
        "4. Recorder()",
        f"5. LogConfig(TensorBoardLogger({str(tmp_path)!r}), hparams={{'batch_size': 8}})",
    ]
    start = events.SummaryMetadata("_hparams_/session_start_info").plugin_data.content
    hparams = plugin_data_pb2.HParamsPluginData.FromString(start).session_start_info.hparams
    assert {k: v.number_value for k, v in hparams.items() if k in ("parameters", "n_epochs", "batch_size", "momentum")} == {
        "parameters": 19, "n_epochs": 2, "batch_size": 8, "momentum": 0.9
    }
    assert learner.explain(FitBegin).splitlines()[1:4] == [
        "  1. EarlyStopping.fit_begin", "  2. Scheduler.fit_begin", "  3. LogConfig.fit_begin"
    ]
