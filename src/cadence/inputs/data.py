"""The data a learner runs on: the ``(train, valid)`` pair, checked when it is handed over, and
the learner's own data for an entry point that is given none."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from cadence.inputs.diagnostics import check_data

__all__ = ["Data", "check_pair", "own_data"]

Data = tuple[Iterable[Any], Iterable[Any] | None]


def check_pair(data: object, where: str) -> Data:
    """``data`` as ``(train, valid)``, each iterable (``valid`` may be None).

    Raises:
        TypeError: naming ``where`` (``"Learner(data=...)"``), what it got and what to write.

    Example:
        >>> check_pair(([1, 2], None), "fit(data=...)")
        ([1, 2], None)
    """
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise TypeError(
            f"{where} expects (train, valid), each an iterable of (x, y) batches, valid may be None; "
            f"got {type(data).__name__}. For training data alone write data=(train, None)."
        )
    train, valid = data
    for name, part in (("train", train), ("valid", valid)):
        if part is None and name == "valid":
            continue
        check_data(part, f"{where}: {name}")
    return train, valid


def own_data(data: Data | None, caller: str, part: Literal["both", "training", "validation"]) -> Any:
    """The learner's ``data`` (``part="both"``), or its training or validation part, for the
    entry point ``caller``, which was given none.

    Raises:
        ValueError: there is none; the message says where to pass it.
    """
    found = data if data is None or part == "both" else data[part == "validation"]
    if found is None:
        given = f"{caller}(n_epochs, data=(train, valid))" if part == "both" else f"{caller}(batches)"
        what = "data" if part == "both" else f"{part} data"
        raise ValueError(
            f"{caller}() has no data: pass it, {given}, or give the learner {what}, "
            f"Learner(..., data=(train, valid)), each an iterable of (x, y) batches (valid may be None)."
        )
    return found
