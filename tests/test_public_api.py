"""The public surface: what ``import cadence`` offers, and that ``__all__`` stays honest."""

from __future__ import annotations

import importlib
import types

import pytest

import cadence

REQUIRED = [
    "Learner",
    "Callback",
    "on",
    "READ",
    "WRITE",
    "NoConflict",
    "RunFirst",
    "Unresolvable",
    "CadenceError",
    "ProtectedAccessError",
    "ConflictError",
    "CycleError",
    "MissingStateError",
    "DeclarationError",
    "CancelSignal",
    "CancelBatch",
    "CancelEpoch",
    "CancelFit",
    "Recorder",
    "History",
    "Metrics",
    "SerialExecutor",
]


@pytest.mark.parametrize("name", REQUIRED)
def test_required_names_are_exported(name: str) -> None:
    assert name in cadence.__all__
    assert getattr(cadence, name) is not None


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from cadence import *", namespace)
    namespace.pop("__builtins__")
    assert sorted(namespace) == sorted(cadence.__all__)


def test_all_matches_the_public_names() -> None:
    public = {
        name
        for name, value in vars(cadence).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public == set(cadence.__all__)
    assert len(cadence.__all__) == len(set(cadence.__all__))


def _isort_key(name: str) -> tuple[int, str]:
    # Constants, then classes, then functions; alphabetical within each (isort / ruff RUF022).
    kind = 0 if name.isupper() else 1 if name[:1].isupper() else 2
    return kind, name


def test_all_is_sorted_constants_classes_functions() -> None:
    # Plain sorted() would put "CadenceError" before "READ"; __all__ follows the isort convention.
    assert cadence.__all__ == sorted(cadence.__all__, key=_isort_key)


@pytest.mark.parametrize("module", ["access", "callback", "errors", "events", "graph", "learner", "phases", "state"])
def test_core_modules_declare_all_that_exists(module: str) -> None:
    mod = importlib.import_module(f"cadence.{module}")
    for name in mod.__all__:
        assert hasattr(mod, name), f"cadence.{module}.__all__ lists {name}, which does not exist"


@pytest.mark.parametrize("name", [n for n in REQUIRED if n not in ("READ", "WRITE")])
def test_public_names_have_docstrings(name: str) -> None:
    assert (getattr(cadence, name).__doc__ or "").strip()


def test_signal_scope_error_lives_in_errors() -> None:
    from cadence.errors import CadenceError, SignalScopeError

    assert issubclass(SignalScopeError, CadenceError)
