"""Resume: a run continued from any checkpoint ends bit-identical to the uninterrupted run.

In-process tests resume from every checkpoint of a run; the subprocess tests kill
``resume_script.py`` with SIGKILL (mid-step, and in the middle of a checkpoint write) and
resume it in a fresh process.
"""

from __future__ import annotations

import logging
import random
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset

from cadence import READ, WRITE, Callback, CycleError, DeclarationError, Learner, Recorder, on
from cadence.callbacks.checkpointer import Checkpointer
from cadence.callbacks.early_stopping import EarlyStopping
from cadence.callbacks.scheduler import Scheduler
from cadence.checkpointing.files import CheckpointError, latest_checkpoint, list_checkpoints, load_checkpoint
from cadence.events import BatchEnd, EpochBegin, EpochEnd, Event, FitBegin, FitEnd
from cadence.phases import Phase, TrainingPhase
from cadence.checkpointing.saver import CheckpointSaver, check_savers
from cadence.schedules import cosine
from cadence.testing import make_test_learner
from helpers import LossLog

HERE = Path(__file__).resolve().parent
N = 24  # samples: 4 training batches of 6 per epoch


class Indexed(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """A map-style dataset that records which indices were loaded."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y, self.loaded = x, y, []

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.loaded.append(index)
        return self.x[index], self.y[index]


class Stream:
    """An iterable with no len() and no index: resuming draws and discards the batches done."""

    def __init__(self, batches: list[Any]) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[Any]:
        order = torch.randperm(len(self.batches)).tolist()  # shuffled from the global RNG
        return (self.batches[i] for i in order)


def make_data(kind: str) -> Any:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(N, 3, generator=generator)
    y = x.sum(1, keepdim=True)
    if kind == "shuffled":
        return DataLoader(Indexed(x, y), batch_size=6, shuffle=True)
    if kind == "seeded":
        return DataLoader(TensorDataset(x, y), batch_size=6, shuffle=True, generator=torch.Generator().manual_seed(5))
    if kind == "unbatched":
        return DataLoader(TensorDataset(x.view(4, 6, 3), y.view(4, 6, 1)), batch_size=None, shuffle=True)
    batches = [(x[i : i + 6], y[i : i + 6]) for i in range(0, N, 6)]
    return batches if kind == "list" else Stream(batches)


def make_learner(folder: Path, kind: str = "shuffled", seed: int = 0, **checkpointer: Any) -> Learner:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Dropout(0.25), torch.nn.Linear(8, 1))
    train, valid = make_data(kind), make_data("list")[:2]
    checkpointer = {"every_steps": 1, "keep_last": 100, **checkpointer}
    callbacks = [LossLog(), Scheduler(lr=cosine(0.05, 0.005), total=12), EarlyStopping(patience=5), Checkpointer(folder, **checkpointer)]
    # A resumed run must not depend on the RNG states it starts with.
    torch.manual_seed(seed), random.seed(seed), np.random.seed(seed)
    return Learner(model, torch.nn.functional.mse_loss, torch.optim.Adam(model.parameters()), data=(train, valid), callbacks=callbacks)


def outcome(learner: Learner) -> dict[str, Any]:
    log = learner.get_callback(LossLog)
    stopping = learner.get_callback(EarlyStopping)
    scheduler = learner.get_callback(Scheduler)
    assert isinstance(log, LossLog) and stopping is not None and scheduler is not None
    return {
        "weights": [p.detach().clone() for p in learner.model.parameters()],
        "losses": log.losses,
        "epochs": {k: list(v) for k, v in learner.cbstate.metrics.epochs.items()},
        "history": {type(k).__name__: v for k, v in learner.cbstate.history.items()},
        "stopping": stopping.state_dict(),
        "scheduler": scheduler.state_dict(),
        "lr": learner.optimizer.param_groups[0]["lr"],
    }


def assert_same(got: dict[str, Any], expected: dict[str, Any]) -> None:
    assert all(torch.equal(a, b) for a, b in zip(got.pop("weights"), expected["weights"]))
    assert got == {k: v for k, v in expected.items() if k != "weights"}


@pytest.mark.parametrize("kind", ["shuffled", "seeded", "unbatched", "list", "stream"])
def test_resuming_from_any_checkpoint_is_exact(tmp_path: Path, kind: str) -> None:
    reference = make_learner(tmp_path / "run", kind)
    reference.fit(3)
    expected = outcome(reference)
    checkpoints = list_checkpoints(tmp_path / "run")
    positions = [load_checkpoint(p).meta["position"] for p in checkpoints]
    assert len(checkpoints) == 15 and {p["batch"] for p in positions} == {0, 1, 2, 3, 4}
    for index, path in enumerate(checkpoints):
        resumed = make_learner(tmp_path / f"again{index}", kind, seed=123)  # a folder per run
        assert resumed.fit(3, resume=path).stopped is None
        assert_same(outcome(resumed), expected)


class Crash(Callback):
    """Plays a killed process: raises at the ``at``-th training batch it sees."""

    def __init__(self, at: int) -> None:
        self.at, self.seen = at, 0

    @on(BatchEnd, phase=TrainingPhase)
    def crash(self, event: Event, phase: Phase, learner: Any) -> None:
        self.seen += 1
        if self.seen == self.at:
            raise RuntimeError("the machine went away")


def test_a_crash_in_a_second_fit_resumes_that_fit_exactly(tmp_path: Path) -> None:
    reference = make_learner(tmp_path / "run")
    reference.fit(1)
    reference.fit(2)
    expected = outcome(reference)
    crashing = make_learner(tmp_path / "crashed")
    crashing.fit(1)
    crashing.add_callback(Crash(at=6))  # the second fit's epoch 2, batch 2
    with pytest.raises(RuntimeError, match="the machine went away"):
        crashing.fit(2)
    newest = latest_checkpoint(tmp_path / "crashed")
    assert newest is not None and newest.sequence == 11 and newest.meta["position"] == {"epoch": 1, "batch": 1, "step": 5}
    resumed = make_learner(tmp_path / "crashed", seed=5)  # a fresh process, the same script
    resumed.fit(2, resume="latest")
    assert_same(outcome(resumed), expected)


def test_resuming_skips_batches_without_loading_their_samples(tmp_path: Path) -> None:
    reference = make_learner(tmp_path / "run")
    reference.fit(2)
    dataset = reference.data[0].dataset  # type: ignore[index, union-attr]
    second_epoch = dataset.loaded[N:]  # indices loaded in epoch 2, in order
    path = next(p for p in list_checkpoints(tmp_path / "run") if p.name.endswith("epoch1-batch3.pt"))
    resumed = make_learner(tmp_path / "again", seed=7)
    resumed.fit(2, resume=path)
    loaded = resumed.data[0].dataset.loaded  # type: ignore[index, union-attr]
    assert loaded == second_epoch[3 * 6 :]  # the last batch only: the first three were skipped unloaded


def test_latest_resumes_from_the_newest_intact_checkpoint(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    reference = make_learner(tmp_path / "run")
    reference.fit(2)
    expected = outcome(reference)
    folder = tmp_path / "run"
    checkpoints = list_checkpoints(folder)
    for path in checkpoints[8:]:
        path.with_suffix(".json").unlink()  # as if never written
    checkpoints[7].unlink()  # epoch1-batch3: its tensors are lost
    newest = list_checkpoints(folder)[-1]
    assert newest.name.endswith("epoch1-batch3.pt") and not newest.exists()
    resumed = make_learner(folder, seed=3)
    with caplog.at_level(logging.WARNING, logger="cadence.checkpointing.files"):
        resumed.fit(2, resume="latest")
    assert f"Skipping checkpoint {newest}" in caplog.text
    assert "Resuming from" in caplog.text and "epoch1-batch2.pt" in caplog.text
    assert_same(outcome(resumed), expected)


def test_latest_with_no_checkpoint_yet_starts_from_the_beginning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    learner = make_learner(tmp_path / "new")
    with caplog.at_level(logging.WARNING, logger="cadence.checkpointing.locate"):  # a warning: it must not pass unseen
        assert learner.fit(1, resume="latest").stopped is None
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert record.getMessage() == f'No checkpoint in {tmp_path / "new"} yet: fit(resume="latest") starts from the beginning.'
    assert len(outcome(learner)["losses"]) == 4


def test_a_finished_run_resumes_to_nothing_and_fires_fit_begin_and_end(tmp_path: Path) -> None:
    events: list[str] = []

    class Watch(Callback):
        @on(FitBegin)
        def begin(self, event: Event, phase: Phase, learner: Any) -> None:
            events.append("FitBegin")

        @on(FitEnd)
        def end(self, event: Event, phase: Phase, learner: Any) -> None:
            events.append("FitEnd")

    make_learner(tmp_path / "run").fit(2)
    resumed = make_learner(tmp_path / "run", seed=4)
    resumed.add_callback(Watch())
    resumed.fit(2, resume="latest")
    assert events == ["FitBegin", "FitEnd"] and len(outcome(resumed)["losses"]) == 8


def test_a_mid_epoch_resume_fires_epoch_begin_then_restores(tmp_path: Path) -> None:
    seen: list[int] = []

    class Peek(Callback):
        state_access = {"cbstate.history": READ}

        @on(BatchEnd, phase=TrainingPhase)
        def peek(self, event: Event, phase: Phase, learner: Any) -> None:
            seen.append(learner.cbstate.history[phase].steps_in_epoch)

    make_learner(tmp_path / "run").fit(1)
    resumed = make_learner(tmp_path / "run", seed=4)
    resumed.add_callback(Peek())
    path = next(p for p in list_checkpoints(tmp_path / "run") if p.name.endswith("epoch0-batch2.pt"))
    resumed.fit(1, resume=path)
    assert seen == [3, 4]  # Recorder's count goes on from the checkpoint


# ---- what a resume refuses ----------------------------------------------------------------------


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    make_learner(tmp_path / "run").fit(2)
    return next(p for p in list_checkpoints(tmp_path / "run") if p.name.endswith("epoch1-batch2.pt"))


def test_latest_needs_a_checkpointer() -> None:
    with pytest.raises(CheckpointError, match=r'fit\(resume="latest"\) looks in the Checkpointer\'s folder, but this learner has no Checkpointer. Add one, e.g. callbacks=\[Checkpointer\("checkpoints"\)\]'):
        make_test_learner().fit(1, resume="latest")


def test_a_path_resumes_without_a_checkpointer(tmp_path: Path) -> None:
    reference = make_test_learner(Recorder(), n_batches=2)
    reference.fit(3)
    make_test_learner(Recorder(), Checkpointer(tmp_path), n_batches=2).fit(2)
    resumed = make_test_learner(Recorder(), n_batches=2)  # the Checkpointer's state is empty: not needed
    resumed.fit(3, resume=tmp_path)
    assert torch.equal(resumed.model.weight, reference.model.weight)
    assert resumed.cbstate.history[TrainingPhase()].epochs == 3


NO_SUCH = (
    r"there is no such file or folder. Pass a checkpoint's .pt file, e.g. "
    r'resume="checkpoints/checkpoint-000012-epoch3-batch40.pt", a folder of checkpoints \(its newest '
    r'intact one is used\), or resume="latest" with a Checkpointer; leave out resume= to start from '
    r"the beginning."
)


@pytest.mark.parametrize("name", ["nothing.pt", "nothing", "latst"])
def test_a_path_that_does_not_exist_names_it_and_what_to_pass(tmp_path: Path, name: str) -> None:
    missing = tmp_path / name
    with pytest.raises(CheckpointError, match=rf"^fit\(resume='{missing}'\): {NO_SUCH}$"):
        make_test_learner().fit(1, resume=str(missing))


def test_a_path_that_does_not_exist_points_at_its_folders_newest_checkpoint(tmp_path: Path) -> None:
    make_test_learner(Checkpointer(tmp_path), n_batches=2).fit(2)
    wrong = tmp_path / "checkpoint-000009-epoch9-batch0.pt"
    with pytest.raises(CheckpointError, match=rf"{NO_SUCH} {tmp_path} has 2 checkpoint\(s\); the newest is checkpoint-000002-epoch2-batch0.pt.$"):
        make_test_learner(n_batches=2).fit(3, resume=wrong)


def test_an_empty_folder_is_an_error_when_named(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"the folder has no checkpoint. Pass the folder a Checkpointer saved to, or leave out resume= to start from the beginning."):
        make_test_learner().fit(1, resume=tmp_path)


def test_resume_must_be_a_path() -> None:
    with pytest.raises(TypeError, match=r'fit\(resume=...\) expects "latest", a checkpoint\'s path or a folder of checkpoints; got int. Pass e.g. resume="latest" \(with a Checkpointer\), resume="checkpoints" or resume="checkpoints/checkpoint-000012-epoch3-batch40.pt".'):
        make_test_learner().fit(1, resume=3)  # type: ignore[arg-type]


def test_a_missing_callback_with_state_is_an_error(tmp_path: Path, checkpoint: Path) -> None:
    learner = make_learner(tmp_path / "other")
    learner.remove_callback(EarlyStopping)
    with pytest.raises(CheckpointError, match=r"holds the state of EarlyStopping \(cadence.callbacks.early_stopping.EarlyStopping\), which this learner lacks. Build the learner with the callbacks the checkpoint was taken with \(LossLog, Scheduler, EarlyStopping, Checkpointer, .*\); it has LossLog, Scheduler, Checkpointer"):
        learner.fit(2, resume=checkpoint)


def test_a_new_callback_with_state_starts_afresh_with_a_warning(tmp_path: Path, checkpoint: Path, caplog: pytest.LogCaptureFixture) -> None:
    learner = make_learner(tmp_path / "other")
    learner.add_callback(EarlyStopping(monitor="train/loss"))
    with caplog.at_level(logging.WARNING, logger="cadence.checkpointing.snapshot"):
        learner.fit(2, resume=checkpoint)
    assert f"EarlyStopping#2 has no state in {checkpoint}: it starts afresh." in caplog.text


def test_a_different_model_is_an_error(tmp_path: Path, checkpoint: Path) -> None:
    learner = make_learner(tmp_path / "other")
    learner.model[0] = torch.nn.Linear(3, 5)  # type: ignore[index]
    with pytest.raises(CheckpointError, match=r"holds a different model \(torch.nn.modules.container.Sequential here; other shape: 0.bias, 0.weight\). Build the learner with the model the checkpoint was taken from.$"):
        learner.fit(2, resume=checkpoint)


def test_a_different_optimizer_is_an_error(tmp_path: Path, checkpoint: Path) -> None:
    learner = make_learner(tmp_path / "other")
    learner.optimizer = torch.optim.SGD(learner.model.parameters(), lr=0.1)
    with pytest.raises(CheckpointError, match=r"holds the state of a torch.optim.adam.Adam, but the learner's optimizer is a torch.optim.sgd.SGD. Build the learner with the same optimizer.$"):
        learner.fit(2, resume=checkpoint)


def test_a_cbstate_entry_the_learner_lacks_is_an_error_with_the_fix(tmp_path: Path) -> None:
    class Tally:
        def __init__(self) -> None:
            self.count = 0

        def state_dict(self) -> dict[str, Any]:
            return {"count": self.count}

        def load_state_dict(self, state: dict[str, Any]) -> None:
            self.count = state["count"]

    class Tallier(Callback):
        state_access = {"cbstate.tally": WRITE}

        def init(self, learner: Any) -> None:
            learner.cbstate.tally = Tally()

    make_test_learner(Tallier(), Checkpointer(tmp_path), n_batches=2).fit(1)
    with pytest.raises(CheckpointError, match=r"checkpoint-000001-epoch1-batch0.pt holds cbstate.tally, but this learner has no such entry; add the callback that creates it in its init\(\) \(the checkpoint was taken with Tallier, Checkpointer\)."):
        make_test_learner(Checkpointer(tmp_path), n_batches=2).fit(2, resume="latest")


def test_a_checkpoint_past_the_end_is_an_error(tmp_path: Path, checkpoint: Path) -> None:
    with pytest.raises(CheckpointError, match=r"is at epoch 2, batch 2, past the end of fit\(1\) \(it was taken in a fit\(2\)\); n_epochs counts all the run's epochs, those before the checkpoint included, so ask for more, e.g. fit\(2, resume=...\).$"):
        make_learner(tmp_path / "other").fit(1, resume=checkpoint)


def test_shorter_training_data_is_an_error(tmp_path: Path) -> None:
    make_learner(tmp_path / "run", "list").fit(1)
    path = next(p for p in list_checkpoints(tmp_path / "run") if p.name.endswith("batch3.pt"))
    learner = make_learner(tmp_path / "other", "list")
    with pytest.raises(CheckpointError, match=r"was taken after batch 3 of an epoch, but the training data has 2 batches. Resume with the same training data.$"):
        learner.fit(1, data=(make_data("list")[:2], None), resume=path)


def test_extra_objects_must_match(tmp_path: Path, checkpoint: Path) -> None:
    learner = make_learner(tmp_path / "other")
    learner.replace_callback(Checkpointer(tmp_path / "other", extra={"scaler": torch.optim.lr_scheduler.StepLR(learner.optimizer, 1)}))
    with pytest.raises(CheckpointError, match=r"holds extra states \[\], but the Checkpointer's extra has \['scaler'\]. Pass the same objects: Checkpointer\(..., extra=\{name: obj\}\).$"):
        learner.fit(2, resume=checkpoint)


def test_nothing_runs_before_a_refused_resume(tmp_path: Path, checkpoint: Path) -> None:
    learner = make_learner(tmp_path / "other")
    learner.remove_callback(EarlyStopping)
    weights = [p.detach().clone() for p in learner.model.parameters()]
    with pytest.raises(CheckpointError):
        learner.fit(2, resume=checkpoint)
    assert all(torch.equal(a, b) for a, b in zip(weights, learner.model.parameters()))
    assert "history" in learner.cbstate and not learner.cbstate.history


# ---- killed for real -----------------------------------------------------------------------------


def run_script(folder: Path, out: Path, *args: str, killed: bool = False) -> dict[str, Any] | None:
    done = subprocess.run(
        [sys.executable, str(HERE / "resume_script.py"), str(folder), str(out), *args],
        capture_output=True, text=True, timeout=120,
    )
    if killed:
        assert done.returncode == -9, done.stderr
        return None
    assert done.returncode == 0, done.stderr
    # The script sets up no logging: a resume is still visible (a warning reaches stderr).
    assert ("Resumed from " in done.stderr) == ("--resume" in args), done.stderr
    result: dict[str, Any] = torch.load(out, weights_only=True)
    return result


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("uninterrupted")
    result = run_script(folder / "checkpoints", folder / "out.pt")
    assert result is not None
    return result


def same_tensors(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> bool:
    return got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)


def same_run(got: dict[str, Any], expected: dict[str, Any]) -> None:
    assert same_tensors(got["weights"], expected["weights"])
    assert got["losses"] == expected["losses"] and len(got["losses"]) == 24
    # The monitors' state: EarlyStopping's best weights (restored: the model ends with them, not
    # with the last trained weights), ReduceLROnPlateau's counters and rate, the best checkpoint.
    assert same_tensors(got["last_weights"], expected["last_weights"])
    assert not same_tensors(expected["weights"], expected["last_weights"])
    got_stopping, expected_stopping = dict(got["stopping"]), dict(expected["stopping"])
    assert same_tensors(got_stopping.pop("best_weights"), expected_stopping.pop("best_weights"))
    assert got_stopping == expected_stopping and expected_stopping["best_epoch"] == 3
    assert got["plateau"] == expected["plateau"] and got["lr"] == expected["lr"] == 0.05 / 4
    assert got["best_checkpoint"] == expected["best_checkpoint"] == {"epoch": 3, "batch": 0, "step": 18}
    assert got["reason"] == expected["reason"]
    # Every epoch value of every key, the epoch resumed mid-way included (Metrics saves its
    # running sums and the torchmetrics states).
    assert "train/mean_absolute_error" in expected["epochs"] and len(expected["epochs"]["train/loss"]) == 4
    assert got["epochs"] == expected["epochs"]


@pytest.mark.parametrize(
    ("kill_at", "resumed_from"),
    [
        (5, {"epoch": 0, "batch": 4, "step": 4}),  # mid-epoch
        (10, {"epoch": 1, "batch": 2, "step": 8}),  # mid-epoch, after an epoch boundary
        (13, {"epoch": 2, "batch": 0, "step": 12}),  # at an epoch boundary, after validation
    ],
)
def test_a_run_killed_mid_step_resumes_bit_identical(
    tmp_path: Path, uninterrupted: dict[str, Any], kill_at: int, resumed_from: dict[str, int]
) -> None:
    folder, out = tmp_path / "checkpoints", tmp_path / "out.pt"
    run_script(folder, out, "--kill-at", str(kill_at), killed=True)
    resumed = run_script(folder, out, "--resume")
    assert resumed is not None and resumed["resumed_from"] == resumed_from
    same_run(resumed, uninterrupted)


@pytest.mark.parametrize("mode", ["torn", "rename", "commit"])
def test_a_kill_during_a_checkpoint_write_leaves_the_latest_readable(
    tmp_path: Path, uninterrupted: dict[str, Any], mode: str
) -> None:
    folder, out = tmp_path / "checkpoints", tmp_path / "out.pt"
    run_script(folder, out, "--kill-in-write", f"{mode}:3", killed=True)
    latest = latest_checkpoint(folder)
    assert latest is not None and latest.sequence == 2  # the third never committed
    assert latest.meta["position"] == {"epoch": 0, "batch": 4, "step": 4}
    left = {p.name for p in folder.iterdir()}
    if mode == "commit":
        assert "checkpoint-000003-epoch0-batch6.pt" in left  # its .json never came
    else:
        assert any(name.endswith(".tmp") for name in left)
    if mode == "torn":  # one resume is enough to show the leftovers do not matter
        resumed = run_script(folder, out, "--resume")
        assert resumed is not None
        same_run(resumed, uninterrupted)
        assert not any(p.name.endswith(".tmp") for p in folder.iterdir())


def test_a_mid_epoch_resume_with_persistent_workers_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    make_test_learner(Checkpointer(tmp_path, every_steps=1, keep_last=5), n_batches=2).fit(1)
    path = tmp_path / "checkpoint-000001-epoch0-batch1.pt"
    x = torch.randn(16, 1)
    loader = DataLoader(TensorDataset(x, 3 * x), batch_size=8, num_workers=1, persistent_workers=True)
    with caplog.at_level(logging.WARNING, logger="cadence.checkpointing.resume"):
        make_test_learner(n_batches=2).fit(1, data=(loader, None), resume=path)
    assert caplog.records[0].getMessage() == (
        f"Resuming {path} mid-epoch with persistent_workers=True: the DataLoader draws its seed only when "
        f"its workers start, so the order of later epochs may differ; for an exact resume, build it with "
        f"persistent_workers=False."
    )


def test_a_resumed_epoch_cancelled_at_its_epoch_begin_still_restores(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from cadence import CancelEpoch
    from cadence.events import EpochBegin

    class CancelFirst(Callback):
        cancelled = False

        @on(EpochBegin, phase=TrainingPhase)
        def cancel(self, event: Event, phase: Phase, learner: Any) -> None:
            if not self.cancelled:
                self.cancelled = True
                raise CancelEpoch("not this one")

    make_learner(tmp_path / "run").fit(1)
    path = next(p for p in list_checkpoints(tmp_path / "run") if p.name.endswith("epoch0-batch2.pt"))
    resumed = make_learner(tmp_path / "again", seed=9)
    resumed.add_callback(CancelFirst())
    with caplog.at_level(logging.WARNING, logger="cadence.checkpointing.resume"):
        resumed.fit(2, resume=path)
    assert "The resumed epoch 1 ended before its first batch; its rest was skipped." in caplog.text
    assert outcome(resumed)["losses"][:2] == load_checkpoint(path).state["callbacks"]["LossLog"]["losses"]
    assert len(outcome(resumed)["losses"]) == 6


def test_a_checkpoint_that_is_not_of_a_fit_is_refused(tmp_path: Path) -> None:
    from cadence.checkpointing.files import write_checkpoint

    path = write_checkpoint(tmp_path, "checkpoint-000001", {"model": {}}, {"position": {"epoch": 1, "batch": 0, "step": 3}})
    with pytest.raises(CheckpointError, match=r"checkpoint-000001.pt is not a checkpoint of a fit: optimizer class, callback classes, optimizer, callbacks, cbstate, extra, rng missing or malformed. Resume from a checkpoint a Checkpointer wrote; fit\(..., resume=\"latest\"\) falls back to the newest intact one."):
        make_test_learner().fit(1, resume=path)


def test_an_optimizer_over_other_parameters_is_an_error(tmp_path: Path, checkpoint: Path) -> None:
    learner = make_learner(tmp_path / "other")
    learner.optimizer = torch.optim.Adam(learner.model[0].parameters())  # type: ignore[index]
    with pytest.raises(CheckpointError, match=r"holds an optimizer over parameter groups of sizes \[4\], but the learner's has \[2\]. Build the optimizer over the same parameters, in the same groups.$"):
        learner.fit(2, resume=checkpoint)


# ---- EpochBegin.data, and the saver seen from the core ----------------------------------------


class SetEpoch(Callback):
    """What a DistributedSampler needs at every epoch: ``event.data.sampler.set_epoch(epoch)``."""

    def __init__(self) -> None:
        self.epoch, self.lengths = 0, []

    @on(EpochBegin, phase=TrainingPhase)
    def set_epoch(self, event: Event, phase: Phase, learner: Any) -> None:
        event.data.sampler.set_epoch(self.epoch)  # type: ignore[attr-defined]
        self.lengths.append(len(event.data))  # type: ignore[arg-type]
        self.epoch += 1

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = state["epoch"]


def distributed_learner(folder: Path) -> Learner:
    torch.manual_seed(0)
    x = torch.randn(N, 3, generator=torch.Generator().manual_seed(1))
    dataset = TensorDataset(x, x.sum(1, keepdim=True))
    sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=2)
    train = DataLoader(dataset, batch_size=6, sampler=sampler)
    model = torch.nn.Linear(3, 1)
    callbacks = [LossLog(), SetEpoch(), Checkpointer(folder, every_steps=1, keep_last=100)]
    return Learner(model, torch.nn.functional.mse_loss, torch.optim.SGD(model.parameters(), lr=0.05), data=(train, None), callbacks=callbacks)


def test_epoch_begin_data_reads_through_to_the_data_with_a_checkpointer(tmp_path: Path) -> None:
    reference = distributed_learner(tmp_path / "run")
    reference.fit(3)
    set_epoch = reference.get_callback(SetEpoch)
    assert isinstance(set_epoch, SetEpoch) and set_epoch.lengths == [4, 4, 4]
    losses = reference.get_callback(LossLog).losses  # type: ignore[union-attr]
    assert losses[:4] != losses[4:8]  # set_epoch reshuffled
    path = next(p for p in list_checkpoints(tmp_path / "run") if p.name.endswith("epoch1-batch2.pt"))
    resumed = distributed_learner(tmp_path / "again")
    resumed.fit(3, resume=path)
    assert resumed.get_callback(LossLog).losses == losses  # type: ignore[union-attr]
    assert all(torch.equal(a, b) for a, b in zip(resumed.model.parameters(), reference.model.parameters()))


def test_the_core_modules_do_not_import_the_callbacks() -> None:
    import ast

    for module in (HERE.parents[1] / "src" / "cadence" / "checkpointing").glob("*.py"):
        tree = ast.parse(module.read_text())
        imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not [m for m in imported if m.startswith("cadence.callbacks")], module.name
    assert isinstance(Checkpointer("checkpoints"), CheckpointSaver)


def test_a_second_saver_is_refused_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(DeclarationError, match=r"A learner takes one Checkpointer; got Checkpointer#1\('.*a'\), Checkpointer#2\('.*b'\). Keep one: it saves the whole learner \(model, optimizer, every callback's state\), and its every_epochs and every_steps can both be set, e.g. Checkpointer\(\"checkpoints\", every_epochs=1, every_steps=500\)."):
        check_savers([Recorder(), Checkpointer(tmp_path / "a"), Checkpointer(tmp_path / "b")])


@pytest.mark.parametrize("named", [Checkpointer, Callback])
def test_running_after_the_checkpointer_is_refused_with_the_fix(tmp_path: Path, named: type) -> None:
    class Upload(Callback):
        run_after = (named,)

    with pytest.raises(CycleError, match=rf"Upload.run_after includes {named.__name__}, which matches the Checkpointer, but Checkpointer.run_after includes Callback: it runs after every other callback, so that a checkpoint holds what they all did at that event; Upload cannot also run after it. Remove {named.__name__} from Upload.run_after; to use a checkpoint it saved, handle a later event \(the next BatchBegin, or FitEnd\) and look in Checkpointer.folder."):
        check_savers([Checkpointer(tmp_path), Upload()])
    check_savers([Checkpointer(tmp_path), Recorder()])  # the usual case passes
    check_savers([Upload()])  # and so does a learner without a saver


# ---- changing the saver while fit runs ---------------------------------------------------------

MID_FIT = (
    r", because a checkpoint saver takes part in a fit from its first batch or not at all \(it counts "
    r"the batches from the first one, to know where a checkpoint resumes\). Change it before calling "
    r'fit, e.g. learner.add_callback\(Checkpointer\("checkpoints"\)\) then learner.fit\(...\), or after '
    r"fit returns."
)


def change_at_first_epoch_end(learner: Learner, change: Any) -> None:
    """Make ``change(learner)`` run once, at the first training EpochEnd, from inside fit."""
    from cadence.callbacks.lambda_callback import LambdaCallback

    pending = [change]

    def run(event: Event, phase: Phase, view: Any) -> None:
        if pending:
            pending.pop()(learner)

    learner.add_callback(LambdaCallback(run, EpochEnd, phase=TrainingPhase))


def test_adding_a_checkpointer_while_fit_runs_is_refused(tmp_path: Path) -> None:
    learner = make_test_learner(n_batches=2)
    checkpointer = Checkpointer(tmp_path)
    change_at_first_epoch_end(learner, lambda real: real.add_callback(checkpointer))
    with pytest.raises(CheckpointError, match=rf"^Adding Checkpointer\('{tmp_path}'\) while fit\(\) runs is refused: it would save nothing in this fit{MID_FIT}"):
        learner.fit(2)
    assert checkpointer not in learner.callbacks and not tmp_path.joinpath("checkpoint-000001-epoch1-batch0.pt").exists()
    learner.add_callback(checkpointer)  # between fits it joins, and saves from the next fit's start
    learner.fit(1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-000001-epoch1-batch0.pt"]


def test_removing_or_replacing_the_checkpointer_while_fit_runs_is_refused(tmp_path: Path) -> None:
    learner = make_test_learner(Checkpointer(tmp_path / "a"), n_batches=2)
    change_at_first_epoch_end(learner, lambda real: real.remove_callback(Checkpointer))
    with pytest.raises(CheckpointError, match=rf"^Removing Checkpointer\('{tmp_path / 'a'}'\) while fit\(\) runs is refused: this fit saves through it until it ends{MID_FIT}"):
        learner.fit(2)
    learner = make_test_learner(Checkpointer(tmp_path / "b"), n_batches=2)
    change_at_first_epoch_end(learner, lambda real: real.replace_callback(Checkpointer(tmp_path / "c")))
    with pytest.raises(CheckpointError, match=rf"^Replacing Checkpointer\('{tmp_path / 'b'}'\) with Checkpointer\('{tmp_path / 'c'}'\) while fit\(\) runs is refused: this fit saves through Checkpointer\('{tmp_path / 'b'}'\) until it ends{MID_FIT}"):
        learner.fit(2)


def test_other_callbacks_still_join_while_fit_runs(tmp_path: Path) -> None:
    learner = make_test_learner(Checkpointer(tmp_path), n_batches=2)
    log = LossLog()
    change_at_first_epoch_end(learner, lambda real: real.add_callback(log))
    learner.fit(2)
    assert len(log.losses) == 2  # the second epoch's batches


# ---- a resume is visible -------------------------------------------------------------------------


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_resume_is_logged_as_a_warning_and_routine_saves_are_not(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        make_test_learner(Checkpointer(tmp_path, every_steps=1), n_batches=2).fit(1)
    assert warnings_of(caplog) == []  # saves log at info: no flood by default
    saves = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Saved ")]
    assert len(saves) == 3 and re.fullmatch(rf"Saved {re.escape(str(tmp_path))}/checkpoint-000001-epoch0-batch1.pt \(every 1 steps\) in \d+\.\d{{3}} s\.", saves[0])
    caplog.clear()
    path = tmp_path / "checkpoint-000002-epoch0-batch2.pt"
    with caplog.at_level(logging.WARNING):
        make_test_learner(n_batches=2).fit(2, resume=path)
        make_test_learner(Checkpointer(tmp_path, every_steps=1), n_batches=2).fit(2, resume="latest")
    assert warnings_of(caplog) == [
        f"Resumed from {path}, taken after batch 2 of epoch 1 (step 2): fit(2) continues with its batch 3.",
        f"Resumed from {tmp_path / 'checkpoint-000003-epoch1-batch0.pt'}, taken after epoch 1 (step 2): fit(2) continues with epoch 2.",
    ]


def test_relaunching_a_finished_run_says_there_is_nothing_left(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    make_test_learner(Checkpointer(tmp_path), n_batches=2).fit(2)
    with caplog.at_level(logging.WARNING):
        make_test_learner(Checkpointer(tmp_path), n_batches=2).fit(2, resume="latest")
    assert warnings_of(caplog) == [
        f"Resumed from {tmp_path / 'checkpoint-000002-epoch2-batch0.pt'}, taken at the end of the run: all 2 "
        f"epochs of fit(2) have run, so there is nothing left to train. To train longer, ask for more epochs in "
        f"total, e.g. fit(4, resume='latest')."
    ]
