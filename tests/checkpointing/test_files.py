"""Checkpoint files: atomic writes, safe and checked loading, RNG states, finding the latest."""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cadence import CadenceError
from cadence.checkpointing.files import (
    CheckpointError,
    check_plain,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    write_checkpoint,
)
from cadence.checkpointing.rng import capture_rng, restore_rng

STATE = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "steps": [1, 2], "note": None}


def write(folder: Path, sequence: int, **meta: Any) -> Path:
    return write_checkpoint(folder, f"checkpoint-{sequence:06d}-epoch0-batch{sequence}", STATE, meta)


class Evil:
    """Unpickling this would create ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def test_round_trip_keeps_tensors_plain_data_and_meta(tmp_path: Path) -> None:
    path = write(tmp_path, 1, position={"epoch": 0, "batch": 1, "step": 1})
    loaded = load_checkpoint(path)
    assert torch.equal(loaded.state["model"]["w"], STATE["model"]["w"])  # type: ignore[index]
    assert loaded.state["steps"] == [1, 2] and loaded.state["note"] is None
    assert loaded.meta["position"] == {"epoch": 0, "batch": 1, "step": 1}
    assert loaded.meta["format"] == "cadence-checkpoint" and loaded.meta["bytes"] == path.stat().st_size
    assert loaded.sequence == 1
    # The same checkpoint by its .json file or its name without suffix.
    assert load_checkpoint(path.with_suffix(".json")).path == path
    assert load_checkpoint(path.with_suffix("")).path == path


def test_a_write_leaves_no_temporary_files(tmp_path: Path) -> None:
    write(tmp_path, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint-000001-epoch0-batch1.json",
        "checkpoint-000001-epoch0-batch1.pt",
    ]


def test_a_failed_write_removes_its_temporary_file_and_keeps_the_previous(tmp_path: Path) -> None:
    write(tmp_path, 1)

    class Unsaveable:
        def __reduce__(self) -> Any:
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        write_checkpoint(tmp_path, "checkpoint-000002-epoch0-batch2", {"x": Unsaveable()}, {})
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-000001-epoch0-batch1.pt"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert load_checkpoint(list_checkpoints(tmp_path)[0]).sequence == 1


def test_a_truncated_file_is_an_error_naming_it(tmp_path: Path) -> None:
    path = write(tmp_path, 1)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=rf"{path.name} is truncated or corrupt: it has 100 bytes.*{USE_ANOTHER}"):
        load_checkpoint(path)


def test_a_flipped_byte_is_caught_by_the_hash(tmp_path: Path) -> None:
    path = write(tmp_path, 1)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"{path.name} is corrupt: its SHA-256 does not match its metadata. {USE_ANOTHER}"):
        load_checkpoint(path)


USE_ANOTHER = r'Use another checkpoint, e.g. fit\(..., resume="latest"\) falls back to the newest intact one.'


def test_corrupt_metadata_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, 1)
    path.with_suffix(".json").write_text('{"format": "cadence-checkp')
    with pytest.raises(CheckpointError, match=rf"checkpoint-000001-epoch0-batch1.json is corrupt \(.*\). {USE_ANOTHER}"):
        load_checkpoint(path)


def test_missing_metadata_means_not_committed(tmp_path: Path) -> None:
    path = write(tmp_path, 1)
    path.with_suffix(".json").unlink()
    with pytest.raises(CheckpointError, match=rf"is not a committed cadence checkpoint: .*\.json is missing .*{USE_ANOTHER}"):
        load_checkpoint(path)
    assert list_checkpoints(tmp_path) == []


def test_metadata_that_cannot_be_read_names_the_file_and_the_os_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cadence.checkpointing.files as files

    path = write(tmp_path, 1)

    def failing_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        raise OSError(5, "Input/output error")  # a failing disk

    monkeypatch.setattr(files, "open", failing_open, raising=False)
    with pytest.raises(CheckpointError, match=rf"^{path.with_suffix('.json')} cannot be read \(\[Errno 5\] Input/output error\). {USE_ANOTHER}$"):
        load_checkpoint(path)


def forge(path: Path, payload: bytes) -> None:
    """Write ``payload`` as ``path`` with metadata that matches it, so loading gets past the hash."""
    path.write_bytes(payload)
    meta = {"format": "cadence-checkpoint", "version": 1, "bytes": len(payload),
            "sha256": __import__("hashlib").sha256(payload).hexdigest()}
    path.with_suffix(".json").write_text(json.dumps(meta))


def test_metadata_of_something_else_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, 1)
    path.with_suffix(".json").write_text('{"format": "other"}')
    with pytest.raises(CheckpointError, match=rf'checkpoint-000001-epoch0-batch1.json is not cadence checkpoint metadata \(no "format": "cadence-checkpoint"\). Pass a checkpoint a Checkpointer wrote \(its .pt or .json file\). {USE_ANOTHER}'):
        load_checkpoint(path)


def test_a_missing_tensor_file_with_its_metadata_is_incomplete(tmp_path: Path) -> None:
    path = write(tmp_path, 1)
    path.unlink()
    with pytest.raises(CheckpointError, match=rf"{path.name} is missing; its metadata file exists but the checkpoint is incomplete. {USE_ANOTHER}"):
        load_checkpoint(path)


def test_a_file_torch_cannot_read_is_corrupt_or_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint-000001-epoch0-batch0.pt"
    forge(path, b"PK\x03\x04" + b"not a zip archive" * 4)
    with pytest.raises(CheckpointError, match=rf"{path.name} is corrupt or not a checkpoint: RuntimeError: PytorchStreamReader failed .*[^.]\. {USE_ANOTHER}$"):
        load_checkpoint(path)


def test_a_file_that_holds_no_dict_is_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint-000001-epoch0-batch0.pt"
    torch.save([1, 2], path)
    forge(path, path.read_bytes())
    with pytest.raises(CheckpointError, match=rf"{path.name} holds a list, not a checkpoint's dict: it was not written by a Checkpointer. {USE_ANOTHER}"):
        load_checkpoint(path)


def test_a_newer_format_version_says_to_upgrade(tmp_path: Path) -> None:
    path = write(tmp_path, 1)
    meta = json.loads(path.with_suffix(".json").read_text())
    path.with_suffix(".json").write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(CheckpointError, match="format version 99; .* Upgrade cadence"):
        load_checkpoint(path)


def test_a_malicious_checkpoint_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "checkpoint-000001-epoch0-batch0.pt"
    torch.save({"model": Evil(marker)}, path)
    # Forge matching metadata, so that only the refusal to unpickle stands in the way.
    meta = {"format": "cadence-checkpoint", "version": 1, "bytes": path.stat().st_size,
            "sha256": __import__("hashlib").sha256(path.read_bytes()).hexdigest()}
    path.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=rf"Refused to load .*{path.name}: .*\(posix.system\).*nothing in the file ran"):
        load_checkpoint(path)
    assert not marker.exists()
    # "latest" skips it the same way, and runs nothing either.
    with pytest.raises(CheckpointError, match="No intact checkpoint"):
        latest_checkpoint(tmp_path)
    assert not marker.exists()


def test_a_plain_pickle_is_refused_too(tmp_path: Path) -> None:
    from cadence.checkpointing.files import load_tensors

    marker = tmp_path / "marker"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"model": Evil(marker)}))
    with pytest.raises(CheckpointError, match=r"Refused to load .*evil.pkl"):
        load_tensors(path)
    assert not marker.exists()


def test_checkpoint_error_is_a_cadence_error() -> None:
    assert issubclass(CheckpointError, CadenceError)


def test_list_checkpoints_orders_by_sequence_and_ignores_others(tmp_path: Path) -> None:
    for sequence in (10, 2, 1):
        write(tmp_path, sequence)
    (tmp_path / "notes.json").write_text("{}")
    (tmp_path / "checkpoint-000011-epoch0-batch11.pt").write_bytes(b"uncommitted")
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "checkpoint-000001-epoch0-batch1.pt",
        "checkpoint-000002-epoch0-batch2.pt",
        "checkpoint-000010-epoch0-batch10.pt",
    ]
    assert list_checkpoints(tmp_path / "missing") == []


def test_latest_falls_back_to_the_newest_intact_one_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write(tmp_path, 1)
    second = write(tmp_path, 2)
    third = write(tmp_path, 3)
    third.write_bytes(b"")
    second.with_suffix(".json").write_text("not json")
    with caplog.at_level(logging.WARNING, logger="cadence.checkpointing.files"):
        found = latest_checkpoint(tmp_path)
    assert found is not None and found.sequence == 1
    assert [r.getMessage().split(": ")[0] for r in caplog.records[:2]] == [f"Skipping checkpoint {third}", f"Skipping checkpoint {second}"]
    assert caplog.records[0].getMessage().startswith(f"Skipping checkpoint {third}: {third} is truncated or corrupt: it has 0 bytes")
    assert caplog.records[-1].getMessage() == f"Resuming from {found.path}, the newest intact checkpoint in {tmp_path}."


def test_latest_of_an_empty_folder_is_none_and_of_a_broken_one_an_error(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path) is None
    write(tmp_path, 1).write_bytes(b"x")
    with pytest.raises(CheckpointError, match=rf"No intact checkpoint in .*\n  - .*truncated.*\nRestore the folder from a backup, or start over: in a folder of your own, or in this one once its checkpoints are moved aside with cadence.checkpoint.archive_checkpoints\('{tmp_path}'\).$"):
        latest_checkpoint(tmp_path)


@pytest.mark.parametrize(
    ("value", "found"),
    [
        ({"best": np.float64(0.5)}, r"numpy.float64 at \['best'\]"),
        ({"a": [1, {"b": object()}]}, r"object at \['a'\]\[1\]\['b'\]"),
        ({(1, 2): 3}, r"tuple at  \(a key\)"),
        ({"f": lambda: 0}, r"function at \['f'\]"),
        (np.zeros(2), r"numpy.ndarray;"),
    ],
)
def test_check_plain_names_where_and_what(value: object, found: str) -> None:
    with pytest.raises(CheckpointError, match=rf"Thing.state_dict\(\) holds a {found}.*Convert it, e.g. float\(value\)"):
        check_plain(value, "Thing.state_dict()")


def test_check_plain_accepts_what_weights_only_loads(tmp_path: Path) -> None:
    value = {"t": torch.ones(2), "n": [1, 2.5, True, None, "s", (3, 4)], 0: {"nested": {}}}
    check_plain(value, "x")
    path = write_checkpoint(tmp_path, "checkpoint-000001", {"value": value}, {})
    loaded = load_checkpoint(path).state["value"]
    assert loaded["n"] == [1, 2.5, True, None, "s", (3, 4)] and torch.equal(loaded["t"], torch.ones(2))


def test_rng_states_round_trip_through_a_checkpoint(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(7)
    random.gauss(0, 1)  # leaves a cached gaussian in Python's state
    np.random.standard_normal()
    state = capture_rng({"g": generator})
    expected = (random.random(), np.random.rand(), torch.rand(2), torch.rand(2, generator=generator))
    path = write_checkpoint(tmp_path, "checkpoint-000001", {"rng": state}, {})
    random.seed(99), np.random.seed(99), torch.manual_seed(99), generator.manual_seed(99)
    restore_rng(load_checkpoint(path).state["rng"], {"g": generator})
    got = (random.random(), np.random.rand(), torch.rand(2), torch.rand(2, generator=generator))
    assert got[:2] == expected[:2]
    assert torch.equal(got[2], expected[2]) and torch.equal(got[3], expected[3])


def test_cuda_states_are_skipped_with_a_warning_without_cuda(caplog: pytest.LogCaptureFixture) -> None:
    if torch.cuda.is_available():
        pytest.skip("checks the warning on a machine without CUDA")
    state = capture_rng()
    state["cuda"] = [torch.zeros(16, dtype=torch.uint8)]
    with caplog.at_level(logging.WARNING, logger="cadence.checkpointing.rng"):
        restore_rng(state)
    assert caplog.records[-1].getMessage() == (
        "The checkpoint has RNG states for 1 CUDA device(s), which this machine lacks; randomness on "
        "the GPU will differ from the original run."
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_rng_is_captured_and_restored() -> None:
    torch.cuda.init()
    state = capture_rng()
    assert "cuda" in state
    expected = torch.rand(3, device="cuda")
    restore_rng(state)
    assert torch.equal(torch.rand(3, device="cuda"), expected)


# ---- links out of the folder -------------------------------------------------------------------


def listing(folder: Path) -> dict[str, Any]:
    """Every entry of ``folder``: a link's target, a file's bytes."""
    return {p.name: os.readlink(p) if p.is_symlink() else p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("suffix", [".pt", ".json"])
def test_a_file_swapped_for_a_link_out_of_the_folder_is_refused_and_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, suffix: str
) -> None:
    folder, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    elsewhere.mkdir()
    older, newest = write(folder, 1), write(folder, 2)
    swapped = newest.with_suffix(suffix)
    target = elsewhere / swapped.name
    swapped.rename(target)  # the same bytes, so only the link stands in the way
    swapped.symlink_to(target)
    before = listing(folder)
    why = (
        rf"it is a symbolic link to {target}, outside the checkpoint's folder {folder}. cadence reads "
        rf"only files inside the folder a checkpoint is in, so that a swapped link cannot make it read "
        rf"another file. If you made the link, pass the file it points to instead; if not, the folder "
        rf"was tampered with"
    )
    with pytest.raises(CheckpointError, match=rf"^Refused to load {swapped}: {why}. {USE_ANOTHER}$"):
        load_checkpoint(newest)
    with caplog.at_level(logging.WARNING, logger="cadence.checkpointing.files"):
        assert list_checkpoints(folder) == [older]
        found = latest_checkpoint(folder)
    assert found is not None and found.path == older
    assert caplog.text.count(f"Skipping checkpoint {newest}: {why.replace(chr(92), '')}.") == 2
    assert listing(folder) == before


def test_links_inside_the_folder_and_a_linked_folder_are_read(tmp_path: Path) -> None:
    real = tmp_path / "real"
    path = write(real, 1)
    (real / "best.pt").symlink_to(path.name)
    (real / "best.json").symlink_to(path.with_suffix(".json").name)
    assert load_checkpoint(real / "best.pt").state["steps"] == [1, 2]
    (tmp_path / "linked").symlink_to(real, target_is_directory=True)
    assert [p.name for p in list_checkpoints(tmp_path / "linked")] == [path.name]
    assert load_checkpoint(tmp_path / "linked" / path.name).sequence == 1
