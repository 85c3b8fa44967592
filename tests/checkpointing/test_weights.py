"""learner.load(path): a checkpoint's model (and optimizer) into a learner, checked first, never
running code; and Checkpointer.best_path, the checkpoint to load."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from cadence import CheckpointError, Checkpointer, EarlyStopping, Learner, Metrics
from cadence.checkpointing.files import list_checkpoints, load_checkpoint, write_checkpoint
from cadence.testing import make_test_learner


def trained(folder: Path, mode: str = "min", **kwargs: Any) -> tuple[Learner, Checkpointer]:
    checkpointer = Checkpointer(folder, keep_last=1, keep_best=1, mode=mode)
    learner = make_test_learner(checkpointer, Metrics(), n_batches=4, lr=0.05, **kwargs)  # valid/loss falls each epoch
    learner.fit(4)
    return learner, checkpointer


@pytest.mark.parametrize(("mode", "pick"), [("min", min), ("max", max)])
def test_best_path_is_the_checkpoint_with_the_best_value(tmp_path: Path, mode: str, pick: Any) -> None:
    learner, checkpointer = trained(tmp_path, mode)
    values = learner.cbstate.metrics.epochs["valid/loss"]
    best = checkpointer.best_path
    assert best is not None and best in list_checkpoints(tmp_path)
    meta = load_checkpoint(best).meta
    assert meta["value"] == pick(values) and meta["position"]["epoch"] == values.index(pick(values)) + 1


def test_best_path_is_none_before_a_checkpoint_and_needs_keep_best(tmp_path: Path) -> None:
    assert Checkpointer(tmp_path, keep_best=1).best_path is None
    with pytest.raises(
        ValueError,
        match=(
            r"Checkpointer\(keep_best=0\) keeps only the newest checkpoints, so the best may be gone; ask for "
            r"it to be kept: Checkpointer\('.*', keep_best=1, monitor=\"valid/loss\", mode=\"min\"\)\."
        ),
    ):
        _ = Checkpointer(tmp_path).best_path


def test_load_puts_the_best_model_into_a_new_learner(tmp_path: Path) -> None:
    _, checkpointer = trained(tmp_path)
    assert checkpointer.best_path is not None
    saved = load_checkpoint(checkpointer.best_path).state
    learner = make_test_learner(Metrics(), n_batches=4)
    optimizer_before = learner.optimizer.state_dict()
    loaded = learner.load(checkpointer.best_path)
    assert loaded.path == checkpointer.best_path
    assert torch.equal(learner.model.weight, saved["model"]["weight"])
    assert learner.optimizer.state_dict() == optimizer_before  # not asked for
    learner.load(checkpointer.best_path, optimizer=True)
    assert learner.optimizer.state_dict()["param_groups"] == saved["optimizer"]["param_groups"]


def test_the_best_checkpoint_holds_the_weights_early_stopping_restores(tmp_path: Path) -> None:
    # In max mode the best of a falling loss is the first epoch: neither the last nor the first weights.
    stopper = EarlyStopping(mode="max", patience=10, restore_best_weights=True)
    checkpointer = Checkpointer(tmp_path, keep_last=1, keep_best=1, mode="max")
    learner = make_test_learner(stopper, checkpointer, Metrics(), n_batches=4, lr=0.05)
    initial = learner.model.weight.detach().clone()
    learner.fit(4)
    path = checkpointer.best_path
    assert path is not None and load_checkpoint(path).meta["position"]["epoch"] == 1
    assert torch.equal(load_checkpoint(path).state["model"]["weight"], learner.model.weight)
    assert not torch.equal(learner.model.weight, initial)


def test_load_checks_before_it_loads(tmp_path: Path) -> None:
    _, checkpointer = trained(tmp_path)
    best = checkpointer.best_path
    assert best is not None
    torch.manual_seed(0)
    other = torch.nn.Linear(2, 1)
    learner = Learner(other, torch.nn.functional.mse_loss, torch.optim.SGD(other.parameters(), lr=0.1), default_callbacks=False)
    before = other.weight.detach().clone()
    with pytest.raises(CheckpointError, match=r"holds a different model .*other shape: weight.*Build the learner with the model"):
        learner.load(best)
    assert torch.equal(other.weight, before)
    adam = make_test_learner()
    adam.optimizer = torch.optim.Adam(adam.model.parameters())
    weight = adam.model.weight.detach().clone()
    with pytest.raises(CheckpointError, match=r"holds the state of a torch\.optim\.sgd\.SGD, but the learner's optimizer is a torch\.optim\.adam\.Adam"):
        adam.load(best, optimizer=True)
    assert torch.equal(adam.model.weight, weight)  # nothing loaded
    layers = torch.nn.Sequential(*[torch.nn.Linear(1, 1) for _ in range(3)])
    with pytest.raises(CheckpointError, match=(
        rf"^{best} holds a different model \(torch.nn.modules.container.Sequential here; missing: 0.bias, 0.weight, "
        rf"1.bias, 1.weight, 2.bias ...; unexpected: weight\). Build the learner with the model the checkpoint "
        rf"was taken from.$"
    )):
        Learner(layers, torch.nn.functional.mse_loss, default_callbacks=False).load(best)


def test_load_refuses_what_is_not_a_checkpoints_path(tmp_path: Path) -> None:
    learner = make_test_learner()
    with pytest.raises(TypeError, match=r"learner.load\(path\) expects a checkpoint's path, e\.g\. learner\.load\(checkpointer\.best_path\) .*got None\. Checkpointer\.best_path is None until"):
        learner.load(None)  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match=r"that is a folder; pass one checkpoint in it, e\.g\. learner\.load\(checkpointer\.best_path\)"):
        learner.load(tmp_path)
    plain = write_checkpoint(tmp_path, "checkpoint-000001", {"weights": torch.ones(1)}, {})
    with pytest.raises(CheckpointError, match=r"is not a checkpoint of a fit: model missing or malformed\. Load a checkpoint a Checkpointer wrote\."):
        learner.load(plain)


class Evil:
    """Unpickling this would create ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def test_load_never_runs_code(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    path = write_checkpoint(tmp_path, "checkpoint-000001", {"model": Evil(marker)}, {})  # intact, hash and all
    with pytest.raises(CheckpointError, match=r"Refused to load .*nothing in the file ran"):
        make_test_learner().load(path)
    assert not marker.exists()


def test_only_epoch_end_checkpoints_have_a_value(tmp_path: Path) -> None:
    # Mid-epoch checkpoints hold weights no epoch value was measured for; they would otherwise
    # carry the last epoch's value, and the newest of them would pass for the best.
    checkpointer = Checkpointer(tmp_path, every_steps=2, keep_last=100, keep_best=1)
    learner = make_test_learner(checkpointer, Metrics(), n_batches=4, lr=0.05)
    learner.fit(2)
    metas = {p.stem: load_checkpoint(p).meta for p in list_checkpoints(tmp_path)}
    values = {stem: meta["value"] for stem, meta in metas.items()}
    epochs = learner.cbstate.metrics.epochs["valid/loss"]
    assert values == {
        "checkpoint-000001-epoch0-batch2": None,
        "checkpoint-000002-epoch0-batch4": None,
        "checkpoint-000003-epoch1-batch0": epochs[0],
        "checkpoint-000004-epoch1-batch2": None,
        "checkpoint-000005-epoch1-batch4": None,
        "checkpoint-000006-epoch2-batch0": epochs[1],
    }
    assert checkpointer.best_path is not None and checkpointer.best_path.stem == "checkpoint-000006-epoch2-batch0"
