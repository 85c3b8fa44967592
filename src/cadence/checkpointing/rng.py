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

__all__ = ["capture_rng", "restore_rng"]

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
