"""Fuzz what the user hands the loop: whatever ``loss_fn`` returns and whatever the data is, a fit
either works or ends in a ``CadenceError``, ``TypeError`` or ``ValueError``; an epoch without
batches is a ``DataWarning``, never silent; no other exception and no other warning, no hang.

Batches that are well-formed pairs of tensors of the wrong shape are left out: those are the
model's own errors (noted, their type kept; see test_diagnostics.py).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

from cadence import READ, CadenceError, Callback, DataWarning, Learner, Recorder, on
from cadence.events import EpochEnd, Event
from cadence.phases import Phase

EXPECTED = (CadenceError, TypeError, ValueError)
FUZZ = settings(
    max_examples=120, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)
MSE = torch.nn.functional.mse_loss


class EmptyEpochs(Callback):
    """Counts the phase epochs that ended with no batch done."""

    state_access = {"cbstate.history": READ}

    def __init__(self) -> None:
        self.empty = 0

    @on(EpochEnd)
    def count(self, event: Event, phase: Phase, learner: Any) -> None:
        if learner.cbstate.history[phase].steps_in_epoch == 0:
            self.empty += 1


def fit(loss_fn: Any, train: Any, valid: Any, n_epochs: int, defaults: bool) -> tuple[BaseException | None, int, int]:
    """Run one fit; return the exception it ended with (or None), the DataWarnings and the
    empty epochs. Any other warning fails the test, as in the rest of the suite."""
    torch.manual_seed(0)
    empty = EmptyEpochs()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("error")
        warnings.simplefilter("always", DataWarning)
        try:
            learner = Learner(torch.nn.Linear(2, 1), loss_fn, data=(train, valid), callbacks=[Recorder(), empty],
                              default_callbacks=defaults)
            learner.fit(n_epochs)
        except Exception as exc:  # judged by the caller
            return exc, len(caught), empty.empty
    return None, len(caught), empty.empty


def pair(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(size, 2), torch.randn(size, 1)


# ---- what loss_fn returns ------------------------------------------------------------------

shapes = st.lists(st.integers(0, 3), max_size=3).map(tuple)
plain = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=4), st.binary(max_size=4),
)


@st.composite
def returned(draw: st.DrawFn, depth: int = 0) -> Any:
    """A recipe for what loss_fn returns, built from (y_pred, y) when it is called."""
    kind = draw(st.sampled_from(["good", "graph", "constant", "plain", "container", "object"][: 6 if depth == 0 else 4]))
    if kind == "good":
        return lambda p, y: MSE(p, y)
    if kind == "graph":  # a tensor of the model's graph, of any shape
        shape = draw(shapes)
        return lambda p, y: ((p - y) ** 2).sum() * torch.ones(shape)
    if kind == "constant":  # a tensor without a graph, of any shape and dtype
        shape, dtype = draw(shapes), draw(st.sampled_from([torch.float32, torch.float64, torch.int64, torch.bool]))
        return lambda p, y: torch.zeros(shape, dtype=dtype)
    if kind == "plain":
        value = draw(plain)
        return lambda p, y: value
    if kind == "container":
        parts = draw(st.lists(returned(depth + 1), max_size=3))
        wrap = draw(st.sampled_from([tuple, list, lambda items: {f"k{i}": v for i, v in enumerate(items)}]))
        return lambda p, y: wrap([part(p, y) for part in parts])
    inner = draw(returned(depth + 1))
    return lambda p, y: type("Output", (), {"loss": inner(p, y)})()


@pytest.mark.timeout(60)
@FUZZ
@given(recipe=returned(), defaults=st.booleans(), validate=st.booleans())
def test_whatever_loss_fn_returns_the_fit_works_or_fails_clearly(recipe: Any, defaults: bool, validate: bool) -> None:
    batches = [pair(4), pair(3)]
    error, _, _ = fit(recipe, batches, batches if validate else None, 2, defaults)
    assert error is None or isinstance(error, EXPECTED), repr(error)


# ---- what the data is ----------------------------------------------------------------------

items = st.one_of(
    st.integers(1, 4).map(pair),
    st.integers(1, 4).map(lambda n: list(pair(n))),
    st.sampled_from([None, 3, "xy", b"xy", (1, 2), ("a", "b"), (None, None), {"x": 1}]),
    st.integers(1, 4).map(lambda n: (*pair(n), 0)),
    st.integers(1, 4).map(lambda n: (pair(n)[0],)),
)


def exhausted(batches: list[Any]) -> Iterator[Any]:
    iterator = iter(batches)
    for _ in iterator:
        pass
    return iterator


def generated(batches: list[Any]) -> Iterator[Any]:
    yield from batches


@st.composite
def data(draw: st.DrawFn) -> Any:
    """A recipe for data of any kind; built fresh for each example (iterators are one-shot)."""
    kind = draw(st.sampled_from(["list", "tuple", "generator", "exhausted", "dataloader", "other"]))
    batches = draw(st.lists(items, max_size=4))
    if kind == "list":
        return lambda: list(batches)
    if kind == "tuple":
        return lambda: tuple(batches)
    if kind == "generator":
        return lambda: generated(batches)
    if kind == "exhausted":
        return lambda: exhausted(batches)
    if kind == "dataloader":
        n, size = draw(st.integers(0, 9)), draw(st.integers(1, 4))
        return lambda: DataLoader(TensorDataset(torch.randn(n, 2), torch.randn(n, 1)), batch_size=size)
    other = draw(st.sampled_from([None, 5, 2.5, "batches", b"batches", {"x": 1}, {}, object(), torch.zeros(3, 2), torch.zeros(()), torch.zeros(0, 2), TensorDataset(torch.zeros(2, 2), torch.zeros(2, 1))]))
    return lambda: other


@pytest.mark.timeout(60)
@FUZZ
@given(train=data(), valid=st.one_of(st.none(), data()), n_epochs=st.integers(1, 3), defaults=st.booleans())
def test_whatever_the_data_is_the_fit_works_fails_clearly_or_warns(train: Any, valid: Any, n_epochs: int, defaults: bool) -> None:
    error, warned, empty = fit(MSE, train(), None if valid is None else valid(), n_epochs, defaults)
    assert error is None or isinstance(error, EXPECTED), repr(error)
    assert warned >= empty  # every epoch without batches said so
