"""TensorBoardLogger, read back with TensorBoard's own EventAccumulator and through a real
TensorBoard server's HTTP API (scalars and the HPARAMS tab's data)."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cadence import LogConfig, LogHistograms, LogMetrics, Metrics, Recorder, RunFolder
from cadence.loggers import Figure, Image, Scalar, TensorBoardLogger
from cadence.testing import make_test_learner


def accumulate(folder: Path) -> EventAccumulator:
    return EventAccumulator(str(folder), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0, "images": 0}).Reload()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[float]]]:
    """One logged run in runs/demo: LogMetrics, LogConfig and LogHistograms on one backend."""
    root = tmp_path_factory.mktemp("runs")
    tb = TensorBoardLogger()
    learner = make_test_learner(
        RunFolder("demo", root=root),
        LogMetrics(tb, every=2),
        LogConfig(tb, hparams={"batch_size": 8, "note": "first"}),
        LogHistograms(tb, every=4),
        Metrics(),
        Recorder(),
        n_batches=4,
    )
    learner.fit(2)
    return root, {k: list(v) for k, v in learner.cbstate.metrics.epochs.items()}


def test_scalars_are_one_step_axis_with_train_and_valid_as_runs(run: tuple[Path, dict[str, list[float]]]) -> None:
    root, epochs = run
    folder = root / "demo" / "tensorboard"
    for phase in ("train", "valid"):
        events = accumulate(folder / phase)
        got = [(e.step, e.value) for e in events.Scalars("loss")]
        assert got == [(4, pytest.approx(epochs[f"{phase}/loss"][0])), (8, pytest.approx(epochs[f"{phase}/loss"][1]))]
    assert [e.step for e in accumulate(folder / "train").Scalars("loss_step")] == [2, 4, 6, 8]


def test_histograms_config_text_and_hparams_are_in_the_root(run: tuple[Path, dict[str, list[float]]]) -> None:
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = accumulate(run[0] / "demo" / "tensorboard")
    assert [e.step for e in events.Histograms("weights/weight")] == [4, 8]
    text = events.Tensors("config")[0].tensor_proto.string_val[0].decode()
    assert "## Model: Linear" in text and "Metrics()" in text and "## Optimizer: SGD" in text
    start = events.SummaryMetadata("_hparams_/session_start_info").plugin_data.content
    hparams = plugin_data_pb2.HParamsPluginData.FromString(start).session_start_info.hparams
    assert hparams["batch_size"].number_value == 8 and hparams["note"].string_value == "first"
    assert hparams["optimizer"].string_value == "SGD" and hparams["lr"].number_value == pytest.approx(0.1)


def test_images_and_figures(tmp_path: Path) -> None:
    from matplotlib.figure import Figure as MplFigure

    figure = MplFigure(figsize=(2, 1))
    figure.add_subplot().plot([0, 1], [1, 0])
    logger = TensorBoardLogger(tmp_path)
    pixels = np.zeros((5, 7, 3), dtype=np.uint8)
    pixels[:, :, 0] = 255
    logger.write([Image("red", pixels), Figure("curve", figure)], step=3, epoch=1, phase="valid")
    logger.close()
    events = accumulate(tmp_path / "valid")
    red, curve = events.Images("red")[0], events.Images("curve")[0]
    assert (red.step, red.width, red.height) == (3, 7, 5)
    assert (curve.width, curve.height) == (200, 100)
    from matplotlib.image import imread
    import io

    assert (imread(io.BytesIO(red.encoded_image_string))[:, :, 0] == 1.0).all()


def test_the_folder_must_be_a_path_and_flush_secs_positive() -> None:
    with pytest.raises(TypeError, match=r'TensorBoardLogger\(folder=...\) expects a path such as "logs"'):
        TensorBoardLogger(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"flush_secs=...\) expects a number of seconds > 0"):
        TensorBoardLogger(flush_secs=0)


# ---- a real TensorBoard server ------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _get(url: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def server(run: tuple[Path, dict[str, list[float]]]) -> Iterator[str]:
    """TensorBoard serving the runs folder on a loopback port; always stopped."""
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(run[0]), "--host", "127.0.0.1",
         "--port", str(port), "--load_fast", "false", "--reload_interval", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if "demo/tensorboard/valid" in _get(f"{url}/data/runs"):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                pytest.fail(f"TensorBoard did not serve the runs within 60 s (exit code {process.poll()}).")
            time.sleep(0.3)
        yield url
    finally:
        process.kill()
        process.wait(timeout=10)


def test_the_server_serves_the_scalar_series(server: str, run: tuple[Path, dict[str, list[float]]]) -> None:
    series = _get(f"{server}/data/plugin/scalars/scalars?run=demo/tensorboard/valid&tag=loss")
    assert [(step, value) for _, step, value in series] == [
        (4, pytest.approx(run[1]["valid/loss"][0])),
        (8, pytest.approx(run[1]["valid/loss"][1])),
    ]


def test_the_server_shows_hparams_with_final_train_and_valid_values(server: str, run: tuple[Path, dict[str, list[float]]]) -> None:
    experiment = _get(f"{server}/data/plugin/hparams/experiment", {"experimentName": ""})
    assert {m["name"]["group"] + "/" + m["name"]["tag"] for m in experiment["metricInfos"]} == {"train/loss", "valid/loss"}
    request = {
        "experimentName": "",
        "allowedStatuses": ["STATUS_SUCCESS"],
        "colParams": [{"metric": {"group": "train", "tag": "loss"}}, {"metric": {"group": "valid", "tag": "loss"}}],
        "startIndex": 0,
        "sliceSize": 10,
    }
    (group,) = _get(f"{server}/data/plugin/hparams/session_groups", request)["sessionGroups"]
    assert group["hparams"]["batch_size"] == 8 and group["hparams"]["optimizer"] == "SGD"
    final = {v["name"]["group"]: (v["trainingStep"], v["value"]) for v in group["metricValues"]}
    assert final == {
        "train": (8, pytest.approx(run[1]["train/loss"][-1])),
        "valid": (8, pytest.approx(run[1]["valid/loss"][-1])),
    }


# ---- only its own files --------------------------------------------------------------------------


def _event_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("events.out.tfevents.*"))


def test_a_logger_touches_only_the_event_files_it_wrote(tmp_path: Path) -> None:
    # One script logs into tmp/experiment_a, a second one into tmp itself: neither touches
    # the other's files, on a fresh start or on a resume.
    make_test_learner(LogMetrics(TensorBoardLogger(tmp_path / "experiment_a"), every=1), Metrics(), Recorder(), n_batches=2).fit(1)
    nested = {p: p.read_bytes() for p in _event_files(tmp_path / "experiment_a")}
    assert len(nested) == 2
    parent = TensorBoardLogger(tmp_path)
    learner = make_test_learner(LogMetrics(parent, every=1), Metrics(), Recorder(), n_batches=2)
    learner.fit(1)
    state = learner.get_callback(LogMetrics).state_dict()  # type: ignore[union-attr]
    assert sorted(state["backends"][0]["position"]["files"]) == sorted(
        f"{phase}/events.out.tfevents.*.{p.name.split('.')[-2]}.cadence" for phase in ("train", "valid") for p in _event_files(tmp_path / phase)
    )
    learner.fit(2)  # appends to its own log; then a resume from the first fit's state cuts back to it
    parent.load_state_dict(state["backends"][0])
    parent.attach("owner", None)
    parent.write([Scalar("resumed", 0.1)], step=3, epoch=2, phase="train")
    parent.detach("owner")
    assert {p: p.read_bytes() for p in _event_files(tmp_path / "experiment_a")} == nested
    assert [e.step for e in accumulate(tmp_path / "train").Scalars("loss_step")] == [1, 2]
    assert [e.step for e in accumulate(tmp_path / "train").Scalars("resumed")] == [3]


def test_no_folder_is_walked_when_a_checkpoint_takes_the_position(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cadence import Checkpointer

    walked: list[str] = []
    real_rglob = Path.rglob
    monkeypatch.setattr(Path, "rglob", lambda self, pattern: walked.append(pattern) or real_rglob(self, pattern))
    tensorboard = TensorBoardLogger(tmp_path / "tb")
    make_test_learner(
        LogMetrics(tensorboard, every=1), Checkpointer(tmp_path / "checkpoints", every_steps=1), Metrics(), Recorder(), n_batches=4
    ).fit(2)
    assert walked == [] and len(_event_files(tmp_path / "tb")) == 2


def test_direct_writes_into_an_earlier_log_replace_its_files_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    first = TensorBoardLogger(tmp_path)
    first.write([Scalar("loss", 0.5)], step=1, epoch=1, phase="train")
    first.close()
    (tmp_path / "train" / "events.out.tfevents.1.other.tool").write_bytes(b"")  # not this logger's
    with caplog.at_level(logging.WARNING, logger="cadence"):
        second = TensorBoardLogger(tmp_path)
        second.write([Scalar("loss", 0.25)], step=1, epoch=1, phase="train")
        second.close()
    assert f"TensorBoardLogger: {tmp_path} holds 1 event file(s) of an earlier run; this fresh log replaces them." in caplog.text
    assert [e.value for e in accumulate(tmp_path / "train").Scalars("loss")] == [0.25]
    assert (tmp_path / "train" / "events.out.tfevents.1.other.tool").exists()


def test_every_loggable_kind_has_a_summary_and_another_kind_is_named() -> None:
    # write() refuses anything but cadence's loggable values (check_loggables), and
    # Hyperparameters go to the HPARAMS summaries: what reaches _summary_value is one of the
    # others, and a kind added to cadence.loggers.values without a summary here is named.
    from matplotlib.figure import Figure as MplFigure
    from tensorboard.compat.proto import summary_pb2

    from cadence.loggers.tensorboard import _summary_value
    from cadence.loggers.values import Histogram, Hyperparameters, Text

    drawn = Figure("curve", MplFigure(figsize=(1, 1)))
    for value in (Scalar("loss", 0.5), Image("x", np.zeros((2, 2))), drawn, Histogram("w", np.arange(4.0)), Text("note", "hi")):
        assert _summary_value(value, summary_pb2).tag == value.name
    with pytest.raises(TypeError, match=r"^TensorBoardLogger cannot write a Hyperparameters\.$"):
        _summary_value(Hyperparameters({"lr": 0.1}), summary_pb2)
