"""The exception tree: errors and control-flow signals are separate families."""

from __future__ import annotations

import pytest

import cadence.errors as errors
from cadence.errors import (
    CadenceError,
    CancelBatch,
    CancelEpoch,
    CancelFit,
    CancelSignal,
    ConflictError,
    CycleError,
    DeclarationError,
    DistributedError,
    MissingStateError,
    ProtectedAccessError,
    SignalScopeError,
)

ERRORS = [ProtectedAccessError, DeclarationError, ConflictError, CycleError, MissingStateError, SignalScopeError, DistributedError]
SIGNALS = [CancelBatch, CancelEpoch, CancelFit]


@pytest.mark.parametrize("error", ERRORS)
def test_errors_are_cadence_errors_not_signals(error: type[Exception]) -> None:
    assert issubclass(error, CadenceError)
    assert not issubclass(error, CancelSignal)


@pytest.mark.parametrize("signal", SIGNALS)
def test_signals_are_not_errors(signal: type[Exception]) -> None:
    assert issubclass(signal, CancelSignal)
    assert issubclass(signal, Exception)
    assert not issubclass(signal, CadenceError)


def test_declaration_error_is_a_value_error() -> None:
    assert issubclass(DeclarationError, ValueError)


def test_protected_access_error_is_not_an_attribute_error() -> None:
    # hasattr() and getattr(..., default) would swallow an AttributeError.
    assert not issubclass(ProtectedAccessError, AttributeError)


def test_signal_keeps_its_reason_and_starts_without_origin() -> None:
    signal = CancelFit("valid/loss did not improve")
    assert signal.reason == "valid/loss did not improve"
    assert str(signal) == "valid/loss did not improve"
    assert signal.origin is None


def test_signal_reason_defaults_to_empty() -> None:
    assert CancelBatch().reason == ""


def test_docstring_draws_every_exception() -> None:
    doc = errors.__doc__ or ""
    for name in errors.__all__:
        assert name in doc, f"{name} missing from the tree in cadence.errors' docstring"


def test_all_lists_the_module_classes() -> None:
    classes = {name for name, value in vars(errors).items() if isinstance(value, type) and issubclass(value, Exception)}
    assert set(errors.__all__) == classes
