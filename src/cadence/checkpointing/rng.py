"""The states of the random number generators a training run draws from, as tensors and plain
data: Python's, NumPy's and torch's global RNGs, CUDA's once CUDA is in use, and any given
``torch.Generator`` (such as a DataLoader's)."""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["capture_rng", "restore_rng", "rng_problem"]

log = logging.getLogger(__name__)


def capture_rng(generators: Mapping[str, torch.Generator] | None = None) -> dict[str, Any]:
    """The states of Python's, NumPy's and torch's global RNGs (CUDA's too once CUDA is in
    use), and of ``generators``, as tensors and plain data.

    Example:
        >>> import random
        >>> state = capture_rng()
        >>> first = random.random(), torch.rand(1)
        >>> restore_rng(state)
        >>> first == (random.random(), torch.rand(1))
        True
    """
    version, internal, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state(legacy=True)
    assert not isinstance(keys, str)
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
        "generators": {name: g.get_state() for name, g in (generators or {}).items()},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping[str, Any], generators: Mapping[str, torch.Generator] | None = None) -> None:
    """Put the RNGs back as ``capture_rng`` found them."""
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"].tolist()), python["gauss"]))
    numpy = state["numpy"]
    keys = numpy["keys"].numpy().astype(np.uint32)
    np.random.set_state((numpy["kind"], keys, numpy["position"], numpy["has_gauss"], numpy["cached"]))
    torch.set_rng_state(state["torch"])
    saved = state.get("generators", {})
    for name, generator in (generators or {}).items():
        if name in saved:
            generator.set_state(saved[name])
    cuda = state.get("cuda")
    if cuda:
        if torch.cuda.is_available() and torch.cuda.device_count() >= len(cuda):
            torch.cuda.set_rng_state_all(cuda)
        else:
            log.warning(
                "The checkpoint has RNG states for %d CUDA device(s), which this machine lacks; "
                "randomness on the GPU will differ from the original run.", len(cuda),
            )


_MT_WORDS = 624  # Python's and NumPy's Mersenne Twister: 624 words and a position


def rng_problem(state: object) -> str | None:
    """What keeps ``state`` from being one ``capture_rng`` made, or None: checked before a
    resume starts, so that a forged state fails there, not in ``restore_rng`` mid-fit.

    Example:
        >>> rng_problem(capture_rng()) is None
        True
        >>> rng_problem({"python": {}, "numpy": {}, "torch": None})
        'python: not the state random.getstate() gives'
    """
    if not isinstance(state, dict):
        return "not a dict"
    if not _python_ok(state.get("python")):
        return "python: not the state random.getstate() gives"
    if not _numpy_ok(state.get("numpy")):
        return "numpy: not the state numpy.random.get_state() gives"
    size = torch.get_rng_state().shape
    if not _tensor(state.get("torch"), torch.uint8, tuple(size)):
        return "torch: not the state torch.get_rng_state() gives"
    generators = state.get("generators", {})
    if not isinstance(generators, dict) or not all(
        isinstance(k, str) and _tensor(v, torch.uint8, tuple(size)) for k, v in generators.items()
    ):
        return "generators: not a dict of torch.Generator states"
    cuda = state.get("cuda", [])
    if not isinstance(cuda, list) or not all(_tensor(t, torch.uint8) for t in cuda):
        return "cuda: not a list of CUDA generator states"
    return None


def _python_ok(python: object) -> bool:
    if not isinstance(python, dict):
        return False
    words, gauss = python.get("state"), python.get("gauss")
    return (
        python.get("version") == 3
        and _tensor(words, torch.int64, (_MT_WORDS + 1,))
        and _words(words, last=_MT_WORDS)
        and (gauss is None or type(gauss) is float)
    )


def _numpy_ok(numpy: object) -> bool:
    if not isinstance(numpy, dict):
        return False
    keys, position = numpy.get("keys"), numpy.get("position")
    return (
        numpy.get("kind") == "MT19937"
        and _tensor(keys, torch.int64, (_MT_WORDS,))
        and _words(keys)
        and type(position) is int
        and 0 <= position <= _MT_WORDS
        and numpy.get("has_gauss") in (0, 1)
        and type(numpy.get("cached")) is float
    )


def _tensor(value: object, dtype: torch.dtype, shape: tuple[int, ...] | None = None) -> bool:
    """A tensor of ``dtype`` and ``shape`` (1-D when None)."""
    if not isinstance(value, torch.Tensor) or value.dtype != dtype:
        return False
    return value.dim() == 1 if shape is None else tuple(value.shape) == shape


def _words(value: Any, last: int | None = None) -> bool:
    """32-bit words; the last one, when ``last`` is given, a position up to ``last``."""
    body = value[:-1] if last is not None else value
    ok = bool(((body >= 0) & (body < 2**32)).all())
    return ok and (last is None or 0 <= int(value[-1]) <= last)
