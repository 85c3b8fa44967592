"""Edited or forged checkpoints: the metadata's shape is checked right after the JSON is parsed,
a fit's tensors right after torch.load; either way the outcome is a CheckpointError naming the
file, the folder is left as it was, and resume="latest" falls back to the newest intact one."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cadence.callbacks.checkpointer import Checkpointer
from cadence.checkpointing.files import CheckpointError, latest_checkpoint, list_checkpoints, load_checkpoint
from cadence.checkpointing.locate import check_fit
from cadence.checkpointing.schema import MAX_META_BYTES
from cadence.testing import make_test_learner

USE_ANOTHER = r'Use another checkpoint, e.g. fit\(..., resume="latest"\) falls back to the newest intact one.'


def saved_run(folder: Path) -> tuple[Path, Path]:
    """A fit's two checkpoints in ``folder``: (older, newest)."""
    make_test_learner(Checkpointer(folder), n_batches=2).fit(2)
    older, newest = list_checkpoints(folder)
    return older, newest


def contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def edit_meta(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    meta_file = path.with_suffix(".json")
    meta = json.loads(meta_file.read_text())
    change(meta)
    meta_file.write_text(json.dumps(meta))


def assert_refused_and_skipped(folder: Path, older: Path, newest: Path, message: str, caplog: pytest.LogCaptureFixture) -> None:
    """``newest`` is refused with ``message``, the folder stays as it was, and "latest" (and a
    resumed fit) falls back to ``older``."""
    before = contents(folder)
    with pytest.raises(CheckpointError, match=message):
        check_fit(load_checkpoint(newest))
    with pytest.raises(CheckpointError, match=message):
        make_test_learner(n_batches=2).fit(3, resume=newest)
    with caplog.at_level(logging.WARNING):
        found = latest_checkpoint(folder, check=check_fit)
    assert found is not None and found.path == older
    assert f"Skipping checkpoint {newest}" in caplog.text
    assert contents(folder) == before  # nothing moved, rewritten or deleted
    resumed = make_test_learner(n_batches=2)
    with caplog.at_level(logging.WARNING):
        resumed.fit(2, resume=folder)  # a folder: its newest intact checkpoint
    assert f"Resumed from {older}, taken after epoch 1 (step 2): fit(2) continues with epoch 2." in caplog.text
    assert contents(folder) == before


# ---- the metadata ---------------------------------------------------------------------------------


def deep(meta: dict[str, Any], levels: int) -> str:
    return json.dumps(meta)[:-1] + ', "notes": ' + "[" * levels + "]" * levels + "}"


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda m: m.update(callbacks={"Checkpointer": {"class": "x"}}), r'"callbacks" is \{"Checkpointer": \{"class": "x"\}\}, expected an object of callback label -> class name'),
        (lambda m: m.update(callbacks=["Checkpointer"]), r'"callbacks" is \["Checkpointer"\], expected an object of callback label -> class name'),
        (lambda m: m.update(position="epoch 2"), r'"position" is "epoch 2", expected an object of counts, \{"epoch": ..., "batch": ..., "step": ...\}'),
        (lambda m: m["position"].update(epoch=-1), r'"position" is \{"epoch": -1, "batch": 0, "step": 4\}, expected an object of counts, \{"epoch": ..., "batch": ..., "step": ...\}'),
        (lambda m: m["position"].update(step=2**64), r'"position" is \{"epoch": 2, "batch": 0, "step": 18446744073709551616\}, expected an object of counts, .*'),
        (lambda m: m.update(optimizer={"name": "SGD"}), r'"optimizer" is \{"name": "SGD"\}, expected a class name'),
        (lambda m: m.update(bytes=10**30), r'"bytes" is 1000000000000000000000000000000, expected a byte count'),
        (lambda m: m.update(sha256=["00"]), r'"sha256" is \["00"\], expected 64 hex digits'),
        (lambda m: m.update(value={"loss": 1}), r'"value" is \{"loss": 1\}, expected a number or null'),
        (lambda m: m.update(notes=json.loads("[" * 17 + "]" * 17)), r"it nests more than 16 levels deep \(cadence writes 2\)"),
        (lambda m: m.__delitem__("sha256"), r'"sha256" missing'),
    ],
    ids=["dict-for-str", "list-for-dict", "str-for-dict", "negative", "huge-int", "optimizer", "huge-bytes", "sha", "value", "depth", "missing"],
)
def test_a_field_of_the_wrong_shape_is_malformed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, change: Callable[[dict[str, Any]], None], problem: str
) -> None:
    older, newest = saved_run(tmp_path)
    edit_meta(newest, change)
    message = rf"^{newest.with_suffix('.json')} is malformed: {problem}. {USE_ANOTHER}$"
    assert_refused_and_skipped(tmp_path, older, newest, message, caplog)


def test_thousands_of_levels_are_malformed_not_a_recursion_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    older, newest = saved_run(tmp_path)
    meta_file = newest.with_suffix(".json")
    meta_file.write_text(deep(json.loads(meta_file.read_text()), 100_000))
    message = rf"^{meta_file} is malformed: it nests deeper than JSON can be read \(cadence writes 2 levels\). {USE_ANOTHER}$"
    assert_refused_and_skipped(tmp_path, older, newest, message, caplog)


def test_a_huge_side_file_is_refused_unread(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    older, newest = saved_run(tmp_path)
    meta_file = newest.with_suffix(".json")
    meta_file.write_text(json.dumps({**json.loads(meta_file.read_text()), "notes": "x" * MAX_META_BYTES}))
    message = rf"^{meta_file} is larger than 1048576 bytes, which no cadence checkpoint's metadata is; it was not read. {USE_ANOTHER}$"
    assert_refused_and_skipped(tmp_path, older, newest, message, caplog)


def test_a_string_version_is_refused_with_the_upgrade_hint(tmp_path: Path) -> None:
    _, newest = saved_run(tmp_path)
    edit_meta(newest, lambda m: m.update(version="1"))
    with pytest.raises(CheckpointError, match=r"has format version '1'; this cadence reads version 1 and older. Upgrade cadence to load it."):
        load_checkpoint(newest)


def test_metadata_loading_would_refuse_is_never_written(tmp_path: Path) -> None:
    from cadence.checkpointing.files import write_checkpoint

    nested: list[Any] = []
    for _ in range(20):
        nested = [nested]
    for meta, problem in [
        ({"callbacks": {"A": 1}}, r'"callbacks" is \{"A": 1\}, expected an object of callback label -> class name'),
        ({"notes": nested}, r"it nests more than 16 levels deep \(cadence writes 2\)"),
        ({"when": object()}, r"it is not JSON data \(Object of type object is not JSON serializable\)"),
    ]:
        with pytest.raises(CheckpointError, match=rf"Cannot write .*checkpoint-000001.json: its metadata is malformed: {problem}. Pass metadata of plain JSON values"):
            write_checkpoint(tmp_path, "checkpoint-000001", {}, meta)
    assert list(tmp_path.iterdir()) == []  # refused before any file was written


# ---- the tensors --------------------------------------------------------------------------------


def forge_state(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Rewrite ``path``'s tensors with ``change`` applied, and its metadata to match, so that
    only the structure check stands in the way (the hash cannot: anyone can recompute it)."""
    state = torch.load(path, weights_only=True)
    change(state)
    torch.save(state, path)
    payload = path.read_bytes()
    edit_meta(path, lambda m: m.update(bytes=len(payload), sha256=hashlib.sha256(payload).hexdigest()))


@pytest.mark.parametrize(
    ("change", "broken"),
    [
        (lambda s: s["optimizer"]["param_groups"][0].update(params=5), "optimizer missing or malformed"),
        (lambda s: s["optimizer"].update(state={7: {}}), "optimizer missing or malformed"),
        (lambda s: s["callbacks"].update(Checkpointer=[1]), "callbacks missing or malformed"),
        (lambda s: s["cbstate"]["plain"].update(__class__=1), "cbstate missing or malformed"),
        (lambda s: s["cbstate"]["plain"].update(entries=1), "cbstate missing or malformed"),
        (lambda s: s.update(model=[1, 2]), "model missing or malformed"),
        (lambda s: s.pop("extra"), "extra missing or malformed"),
        (lambda s: s["rng"]["now"]["python"].update(state=torch.zeros(3, dtype=torch.int64)), r"its RNG state is malformed \(python: not the state random.getstate\(\) gives\)"),
        (lambda s: s["rng"]["now"]["numpy"].update(position=9999), r"its RNG state is malformed \(numpy: not the state numpy.random.get_state\(\) gives\)"),
        (lambda s: s["rng"]["now"].update(torch=torch.zeros(2)), r"its RNG state is malformed \(torch: not the state torch.get_rng_state\(\) gives\)"),
    ],
    ids=["params", "state-key", "callback-state", "dunder-entry", "method-entry", "model", "extra", "python-rng", "numpy-rng", "torch-rng"],
)
def test_a_forged_tensor_file_of_the_wrong_structure_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, change: Callable[[dict[str, Any]], None], broken: str
) -> None:
    older, newest = saved_run(tmp_path)
    forge_state(newest, change)
    message = (
        rf"^{newest} is not a checkpoint of a fit: {broken}. Resume from a checkpoint a Checkpointer "
        rf'wrote; fit\(..., resume="latest"\) falls back to the newest intact one.$'
    )
    assert_refused_and_skipped(tmp_path, older, newest, message, caplog)


def test_a_model_entry_that_is_not_a_tensor_is_a_different_model(tmp_path: Path) -> None:
    _, newest = saved_run(tmp_path)
    forge_state(newest, lambda s: s["model"].update(weight="heavy"))
    with pytest.raises(CheckpointError, match=r"holds a different model \(torch.nn.modules.linear.Linear here; not a tensor: weight\)"):
        make_test_learner(n_batches=2).fit(3, resume=newest)


# ---- any edit at all ------------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=10,
)
FIELDS = ["format", "version", "bytes", "sha256", "position", "n_epochs", "callbacks", "created", "model",
          "optimizer", "monitor", "mode", "value", "reason"]
EDITS = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(FIELDS), JSON),
    st.tuples(st.just("drop"), st.sampled_from(FIELDS), st.none()),
    st.tuples(st.sampled_from(["position", "callbacks"]), st.sampled_from(["epoch", "batch", "step", "Checkpointer"]), JSON),
    st.tuples(st.just("whole"), st.just(""), JSON),
)


def apply(meta: Any, edit: tuple[str, str, Any]) -> Any:
    kind, name, value = edit
    if kind == "whole" or not isinstance(meta, dict):
        return value
    if kind == "drop":
        meta.pop(name, None)
    elif kind == "set":
        meta[name] = value
    elif isinstance(meta.get(kind), dict):
        meta[kind][name] = value
    return meta


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, str]:
    folder = tmp_path_factory.mktemp("edited")
    older, newest = saved_run(folder)
    return folder, older, newest, newest.with_suffix(".json").read_text()


@pytest.mark.timeout(60)  # never a hang
@settings(max_examples=100, deadline=None, derandomize=True, database=None)
@given(edits=st.lists(EDITS, min_size=1, max_size=3))
def test_any_edit_of_the_metadata_is_a_checkpoint_error_or_a_checkpoint(
    run_folder: tuple[Path, Path, Path, str], edits: list[tuple[str, str, Any]]
) -> None:
    folder, older, newest, original = run_folder
    meta_file = newest.with_suffix(".json")
    meta: Any = json.loads(original)
    for edit in edits:
        meta = apply(meta, edit)
    meta_file.write_text(json.dumps(meta))
    try:
        before = contents(folder)
        try:
            check_fit(load_checkpoint(newest))
            accepted = True
        except CheckpointError as error:
            assert str(newest.stem) in str(error)  # it names the file
            accepted = False
        found = latest_checkpoint(folder, check=check_fit)  # never raises: the older one is intact
        assert found is not None and found.path == (newest if accepted else older)
        try:
            make_test_learner(n_batches=2).fit(3, resume=newest)
        except CheckpointError as error:
            assert str(newest.stem) in str(error)
        assert contents(folder) == before
    finally:
        meta_file.write_text(original)
