"""DataParallel: parity with one process, metrics over all the data, rank-zero callbacks, and
how a Learner picks its strategy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import linear_batches

from torch.utils.data import DataLoader, TensorDataset

from cadence import READ, Callback, Learner, on
from cadence.distributed import DataParallel
from cadence.distributed.strategy import resolve_strategy
from cadence.errors import DistributedError
from cadence.events import BatchEnd
from cadence.phases import TrainingPhase
from cadence.testing import make_test_learner
from distributed import scenarios

Ranks = tuple[Path, list[dict[str, Any]]]


def assert_close(got: list[torch.Tensor], expected: list[torch.Tensor], tolerance: float) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert torch.allclose(a, b, atol=tolerance, rtol=0), float((a - b).abs().max())


def test_two_ranks_with_batch_8_end_with_the_weights_of_one_process_with_batch_16(two_ranks: Ranks, tmp_path: Path) -> None:
    _, ranks = two_ranks
    reference = scenarios.parity(16, str(tmp_path))  # Adam, 4 epochs, the same order of samples
    for result in ranks:
        assert_close(result["parity"]["weights"], reference["weights"], 1e-6)
        assert result["parity"]["epochs"].keys() == reference["epochs"].keys()
        for key, values in reference["epochs"].items():
            assert result["parity"]["epochs"][key] == pytest.approx(values, abs=1e-6), key


def test_every_rank_sees_the_same_epoch_values(two_ranks: Ranks) -> None:
    _, (first, second) = two_ranks
    for run in ("parity", "uneven"):
        assert first[run]["epochs"] == second[run]["epochs"]  # bit-identical
        assert_close(first[run]["weights"], second[run]["weights"], 0.0)


def test_metrics_on_data_that_does_not_divide_evenly_count_each_sample_once(two_ranks: Ranks) -> None:
    _, ranks = two_ranks
    got = ranks[0]["uneven"]["epochs"]
    # Training (37 samples: each rank's shard is padded with a repeated sample): the first
    # epoch's values are those of one process over the same steps.
    reference = scenarios.uneven(16)["epochs"]
    for key in ("train/loss", "train/mae", "train/mean_error"):
        assert got[key][0] == pytest.approx(reference[key][0], abs=1e-6), key
    # Validation (23 samples, unpadded shards of 12 and 11): exactly the final model over all of them.
    model = scenarios.make_model()
    with torch.no_grad():
        for param, value in zip(model.parameters(), ranks[0]["uneven"]["weights"]):
            param.copy_(value)
        x, y = scenarios.dataset(23, 2).tensors
        error = model(x) - y
    assert got["valid/loss"][-1] == pytest.approx(float((error**2).mean()), abs=1e-6)
    assert got["valid/mae"][-1] == pytest.approx(float(error.abs().mean()), abs=1e-6)
    assert got["valid/mean_error"][-1] == pytest.approx(float(error.mean()), abs=1e-6)


def test_rank_zero_callbacks_print_and_write_once(two_ranks: Ranks) -> None:
    folder, (first, second) = two_ranks
    assert second["parity"]["printed"] == ""  # ProgressPrinter and MetricsPrinter: rank 0 only
    rows = [line for line in first["parity"]["printed"].splitlines() if line.split()[:1] in (["1"], ["2"], ["3"], ["4"])]
    assert [row.split()[0] for row in rows] == ["1", "2", "3", "4"]
    lines = (folder / "epochs.txt").read_text().splitlines()  # EpochLog, placement = "rank_zero"
    expected = [f"valid/loss {v:.6f}" for v in first["parity"]["epochs"]["valid/loss"]]
    assert lines == expected


def test_a_dataparallel_fit_on_one_process_needs_no_process_group() -> None:
    learner = make_test_learner(strategy=DataParallel())
    assert learner.fit(1).stopped is None
    assert not torch.distributed.is_initialized()
    strategy = learner.strategy
    assert isinstance(strategy, DataParallel) and (strategy.rank, strategy.world_size) == (0, 1)


def test_auto_is_no_strategy_in_a_plain_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert make_test_learner().strategy is None
    assert resolve_strategy(None) is None


def test_auto_under_torchrun_is_dataparallel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert isinstance(resolve_strategy("auto"), DataParallel)


def test_a_strategy_of_the_wrong_kind_is_refused() -> None:
    with pytest.raises(TypeError, match=r'Learner\(strategy=...\) expects "auto" \(the default\), None or a strategy such as DataParallel\(\); got \'ddp\''):
        make_test_learner(strategy="ddp")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backend": "mpi"}, r'DataParallel\(backend=\'mpi\'\): use "nccl" \(GPUs\), "gloo" \(CPUs\) or None'),
        ({"seed": 1.5}, r"DataParallel\(seed=1.5\): use an int, the same on every rank"),
        ({"check_every": 0}, r"DataParallel\(check_every=0\): use a positive int, e.g. 32"),
        ({"timeout": 0}, r"DataParallel\(timeout=0\): use a positive number of seconds, e.g. 600"),
    ],
)
def test_bad_options_are_refused_with_the_fix(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DataParallel(**kwargs)


def test_one_dataparallel_serves_one_learner() -> None:
    strategy = DataParallel()
    make_test_learner(strategy=strategy)
    with pytest.raises(ValueError, match=r"This DataParallel belongs to another Learner; give each Learner its own DataParallel\(\)"):
        make_test_learner(strategy=strategy)


class Inputs(Callback):
    state_access = {"batch.x": READ}

    def __init__(self) -> None:
        self.seen: list[list[int]] = []

    @on(BatchEnd, phase=TrainingPhase)
    def record(self, event: Any, phase: Any, learner: Any) -> None:
        self.seen.append(learner.batch.x.squeeze(1).long().tolist())


def test_one_process_draws_the_order_that_every_world_size_draws() -> None:
    # With DataParallel the shuffle comes from seed + epoch (not from the global RNG), so that
    # N ranks with batch B and one process with batch N * B train on the same samples per step.
    data = TensorDataset(torch.arange(8.0).unsqueeze(1), torch.zeros(8, 1))
    inputs = Inputs()
    learner = Learner(
        torch.nn.Linear(1, 1), torch.nn.functional.mse_loss, data=(DataLoader(data, batch_size=4, shuffle=True), None),
        callbacks=[inputs], default_callbacks=False, strategy=DataParallel(seed=3),
    )
    learner.fit(2)
    order = [torch.randperm(8, generator=torch.Generator().manual_seed(3 + epoch)).tolist() for epoch in (0, 1)]
    assert inputs.seen == [order[0][:4], order[0][4:], order[1][:4], order[1][4:]]


def test_a_learner_without_distribution_is_unchanged() -> None:
    learner = Learner(torch.nn.Linear(1, 1), torch.nn.functional.mse_loss, data=(linear_batches(), None), strategy=None)
    assert learner.strategy is None


def test_an_accelerator_gets_a_todevice_for_its_batches_unless_there_is_one() -> None:
    from cadence import ToDevice

    learner = make_test_learner(strategy=DataParallel(device="meta"))  # an accelerator stand-in
    assert [repr(cb) for cb in learner.callbacks if isinstance(cb, ToDevice)] == ["ToDevice('meta')"]
    learner = make_test_learner(ToDevice("cpu"), strategy=DataParallel(device="meta"))
    assert [repr(cb) for cb in learner.callbacks if isinstance(cb, ToDevice)] == ["ToDevice('cpu')"]
    assert not any(isinstance(cb, ToDevice) for cb in make_test_learner(strategy=DataParallel()).callbacks)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: DataParallel picks the GPU and nccl there")
def test_on_a_gpu_one_process_trains_there(tmp_path: Path) -> None:
    strategy = DataParallel()
    learner = make_test_learner(strategy=strategy)
    assert strategy.device.type == "cuda"
    learner.fit(1)
    assert next(learner.model.parameters()).device.type == "cuda"


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices: nccl runs one rank per GPU")
def test_two_gpus_with_nccl_train_the_weights_of_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cadence.distributed import launch

    monkeypatch.setattr(scenarios, "BACKEND", None)  # the automatic choice (nccl); restored after the test
    ranks = launch(scenarios.gpu_parity, str(tmp_path), nprocs=2, timeout=240)
    reference = scenarios.gpu_parity(str(tmp_path), alone=True)
    for result in ranks:
        assert result["backend"] == "nccl"
        assert_close(result["weights"], reference["weights"], 1e-5)


def test_every_rank_uses_the_run_folder_rank_zero_chose_and_logs_once(two_ranks: Ranks) -> None:
    folder, (first, second) = two_ranks
    assert first["run_folder"]["name"] == second["run_folder"]["name"]
    assert first["run_folder"]["folders"] == [first["run_folder"]["name"]]  # one folder, not one per rank
    run = folder / "runs" / first["run_folder"]["name"]
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "metrics.csv"]
    assert len(list((run / "checkpoints").glob("*.json"))) == 2  # every epoch, written once
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == len(set(rows))  # LogMetrics: rank 0 only, no line twice
    assert first["run_folder"]["printed"].count("Run folder:") == 1 and "Run folder:" not in second["run_folder"]["printed"]


def test_evaluation_runs_on_one_rank_alone_and_the_sweep_stops_on_every_rank_together(two_ranks: Ranks) -> None:
    _, ranks = two_ranks
    first, second = (r["outside_fit"] for r in ranks)
    # Rank 0 evaluated and predicted while rank 1 went on to the sweep: no collective waited.
    assert first["validate"] == pytest.approx(first["expected"], rel=1e-6) and first["predict"] == [24, 1]
    assert "validate" not in second
    # The losses (rank 1's targets are 100 times larger) are averaged over the ranks: one sweep.
    assert first["sweep"] == second["sweep"] and len(first["sweep"]["lrs"]) < 40
    assert_close(first["weights"], second["weights"], 0.0)  # and a fit after it still agrees


def test_a_rank_zero_callbacks_state_lives_on_rank_zero_alone(two_ranks: Ranks) -> None:
    _, (first, second) = two_ranks
    got = first["rank_zero_state"]
    # Rank 0: init, a state per checkpoint (2 epochs, then 1 after the second fit's reset);
    # the resumed learner loads the checkpoint's state and saves once more.
    assert got["calls"] == ["init", "state_dict", "state_dict", "reset", "state_dict"]
    assert got["saved"] == {"epochs": 2} and got["epochs"] == 1
    assert got["resumed"] == {"calls": ["init", "load_state_dict", "state_dict"], "epochs": 3}
    # Rank 1: none of its methods ran, not even a reset or a load, and it counted nothing.
    assert second["rank_zero_state"]["calls"] == [] and second["rank_zero_state"]["epochs"] == 0
    assert second["rank_zero_state"]["resumed"] == {"calls": [], "epochs": 0}
    assert second["rank_zero_state"]["saved"] == {"epochs": 2}  # the file rank 0 wrote


def test_a_model_without_a_tensor_to_carry_the_stops_is_refused_with_the_fix() -> None:
    from cadence.distributed.agreement import Agreement, Replica
    from cadence.distributed.group import Context

    class Detached(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> dict[str, Any]:
            return {"scores": x.detach() * 2}

    agreement = Agreement(Context(0, 2, torch.device("cpu")), check_every=1)
    with pytest.raises(
        DistributedError,
        match=r"Detached returned no tensor that requires a gradient \(dict\); DataParallel needs one to agree on "
        r"stops across ranks during the backward pass. Return the prediction as a tensor \(or a tuple, list or "
        r"dict whose first tensor is the one the loss uses\).",
    ):
        Replica(Detached(), agreement, torch.device("cpu"))(torch.ones(2, 3))
    carried = Replica(torch.nn.Linear(3, 1), agreement, torch.device("cpu"))(torch.ones(2, 3))
    assert carried.requires_grad and carried.shape == (2, 1)


def test_a_failed_collective_is_explained_by_a_note() -> None:
    strategy = DataParallel()
    make_test_learner(strategy=strategy)
    error = RuntimeError("[gloo] Connection closed by peer")
    strategy.end_fit(error)
    assert error.__notes__ == [
        "A collective failed on rank 0 of 1: another rank most likely stopped first, with its own error "
        "(cadence.distributed.launch re-raises the first rank's error; under torchrun, look for it in that "
        "rank's output)."
    ]
    unrelated = ValueError("bad input")
    strategy.end_fit(unrelated)
    assert not hasattr(unrelated, "__notes__")
