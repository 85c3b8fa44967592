"""The optional dependencies of the backends and plots (``cadence[tensorboard]``,
``cadence[mlflow]``, ``cadence[plots]``): checked when a backend is built, imported only when it
first writes, so that ``import cadence`` imports none of them."""

from __future__ import annotations

import importlib.util

from cadence.errors import MissingExtraError

__all__ = ["require"]


def require(kind: str, extra: str, *modules: str) -> None:
    """Check that ``modules`` can be imported (without importing them).

    Raises:
        MissingExtraError: naming the extra to install.

    Example:
        >>> require("CSVLogger", "csv", "csv")
        >>> require("Nothing", "nothing", "no_such_module_here")
        Traceback (most recent call last):
        ...
        cadence.errors.MissingExtraError: Nothing needs no_such_module_here, which is not installed. Install it with: pip install 'cadence[nothing]'
    """
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtraError(
            f"{kind} needs {', '.join(missing)}, which is not installed. Install it with: "
            f"pip install 'cadence[{extra}]'"
        )
