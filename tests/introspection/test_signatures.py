"""Handler signatures checked when a callback class is created, and reprs from the constructor."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from cadence import (
    Callback,
    Checkpointer,
    DeclarationError,
    EarlyStopping,
    GradientAccumulation,
    GradientClipping,
    LambdaCallback,
    Metrics,
    MetricSpec,
    ProgressPrinter,
    Recorder,
    ReduceLROnPlateau,
    Scheduler,
    StopOnNaNLoss,
    ToDevice,
    on,
    throttle,
)
from cadence.events import BatchEnd, EpochEnd, Event
from cadence.phases import Phase, TrainingPhase
from cadence.schedules import constant
from cadence.testing import make_test_learner

# ---- handler signatures --------------------------------------------------------------------


def handler_class(method: Callable[..., Any], wrap: Callable[[Any], Any] = lambda m: m) -> type[Callback]:
    return type("Printer", (Callback,), {"show": wrap(on(BatchEnd, phase=TrainingPhase)(method))})


def missing_event(self: Any, learner: Any) -> None: ...
def missing_learner(self: Any, event: Any, phase: Any) -> None: ...
def extra_required(self: Any, event: Any, phase: Any, learner: Any, step: int) -> None: ...
def keyword_only(self: Any, *, event: Any, phase: Any, learner: Any) -> None: ...
def no_self(event: Any, phase: Any, learner: Any) -> None: ...
def keywords_only(self: Any, **kwargs: Any) -> None: ...


@pytest.mark.parametrize(
    ("method", "signature", "problem"),
    [
        (missing_event, r"\(self, learner\)", "too many positional arguments"),
        (missing_learner, r"\(self, event, phase\)", "too many positional arguments"),
        (extra_required, r"\(self, event, phase, learner, step\)", "missing a required argument: 'step'"),
        (keyword_only, r"\(self, \*, event, phase, learner\)", "too many positional arguments"),
        (no_self, r"\(event, phase, learner\)", "too many positional arguments"),
        (keywords_only, r"\(self, \*\*kwargs\)", "too many positional arguments"),
    ],
)
def test_a_handler_that_cannot_take_event_phase_learner_fails_at_class_creation(
    method: Callable[..., Any], signature: str, problem: str
) -> None:
    message = (
        rf"^Printer\.show is a handler \(@on\(BatchEnd, phase=TrainingPhase\)\), and cadence calls it as "
        rf"show\(event, phase, learner\), but its signature is show{signature}: {problem}\. "
        rf"Write it as: def show\(self, event, phase, learner\): \.\.\.$"
    )
    with pytest.raises(DeclarationError, match=message):
        handler_class(method)


def ok_plain(self: Any, event: Any, phase: Any, learner: Any) -> None: ...
def ok_args(self: Any, *args: Any, **kwargs: Any) -> None: ...
def ok_some_args(self: Any, event: Any, *rest: Any) -> None: ...
def ok_default(self: Any, event: Any, phase: Any, learner: Any, step: int = 0) -> None: ...


def logged(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return method(*args, **kwargs)

    return wrapper


@pytest.mark.parametrize(
    ("method", "wrap"),
    [
        (ok_plain, lambda m: m),
        (ok_args, lambda m: m),
        (ok_some_args, lambda m: m),
        (ok_default, lambda m: m),
        (ok_plain, logged),
        (lambda event, phase, learner: None, staticmethod),
        (lambda cls, event, phase, learner: None, classmethod),
    ],
    ids=["plain", "args-kwargs", "some-args", "default", "wrapped", "staticmethod", "classmethod"],
)
def test_handlers_that_take_event_phase_learner_pass_and_run(method: Callable[..., Any], wrap: Callable[[Any], Any]) -> None:
    kind = handler_class(method, wrap)
    make_test_learner(kind(), n_batches=2).fit(1)


def test_a_subclass_that_overrides_a_handler_is_checked_too() -> None:
    class Base(Callback):
        @on(EpochEnd)
        def report(self, event: Event, phase: Phase, learner: Any) -> None: ...

    with pytest.raises(DeclarationError, match=r"^Child\.report is a handler \(@on\(EpochEnd, phase=Phase\)\), .* but its signature is report\(self\)"):

        class Child(Base):
            def report(self) -> None:  # type: ignore[override]
                ...


def test_lambda_callback_checks_its_function() -> None:
    def show(learner: Any) -> None: ...

    with pytest.raises(TypeError, match=r"^LambdaCallback\(fn, \.\.\.\) calls fn\(event, phase, learner\), but show\(learner\) cannot be called that way: too many positional arguments\. Write it as: def show\(event, phase, learner\): \.\.\.$"):
        LambdaCallback(show, BatchEnd)
    LambdaCallback(lambda *args: None, BatchEnd)
    LambdaCallback(print, BatchEnd)  # a builtin without a readable signature: left to the call


# ---- reprs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("callback", "shown"),
    [
        (EarlyStopping(), "EarlyStopping()"),
        (EarlyStopping(patience=5), "EarlyStopping(patience=5)"),
        (EarlyStopping("valid/accuracy", "max", min_delta=0.01), "EarlyStopping(monitor='valid/accuracy', mode='max', min_delta=0.01)"),
        (Checkpointer("runs/ckpt"), "Checkpointer('runs/ckpt')"),
        (Checkpointer(Path("runs"), every_steps=100, keep_best=1), "Checkpointer('runs', every_steps=100, keep_best=1)"),
        (GradientClipping(1), "GradientClipping(max_norm=1.0)"),
        (GradientClipping(max_value=0.5, norm_type=1), "GradientClipping(max_value=0.5, norm_type=1.0)"),
        (GradientAccumulation(4), "GradientAccumulation(4)"),
        (StopOnNaNLoss(check_every=8), "StopOnNaNLoss(check_every=8)"),
        (ProgressPrinter(refresh_seconds=1.0, transient=False), "ProgressPrinter(refresh_seconds=1.0, transient=False)"),
        (Recorder(), "Recorder()"),
        (ReduceLROnPlateau(), "ReduceLROnPlateau()"),
        (
            ReduceLROnPlateau("valid/acc", "max", threshold=0.01, cooldown=2, min_lr=[1e-5, 1e-6]),
            "ReduceLROnPlateau(monitor='valid/acc', mode='max', threshold=0.01, cooldown=2, min_lr=[1e-05, 1e-06])",
        ),
        # Special reprs where they say more:
        (Metrics(), "Metrics()"),
        (Metrics(MetricSpec(lambda p, y: p.mean(), name="mean", phases="valid")), "Metrics(mean[valid])"),
        (Scheduler(lr=constant(0.1)), "Scheduler(lr=constant(0.1), unit='step')"),
        (ToDevice("cpu"), "ToDevice('cpu')"),
        (throttle(Recorder(), BatchEnd, every=2), "throttle(Recorder(), BatchEnd, every=2)"),
    ],
)
def test_reprs_show_the_arguments_that_differ_from_the_defaults(callback: Callback, shown: str) -> None:
    assert repr(callback) == shown


def test_a_user_callback_gets_the_same_repr() -> None:
    class Threshold(Callback):
        def __init__(self, limit: float, key: str = "train/loss", *, warn: bool = False, tensor: Any = None) -> None:
            self.limit, self._key, self.warn, self.tensor = limit, key, warn, tensor

    assert repr(Threshold(0.5)) == "Threshold(0.5)"
    assert repr(Threshold(0.5, "valid/loss", warn=True)) == "Threshold(0.5, key='valid/loss', warn=True)"
    assert repr(Threshold(1, tensor=torch.zeros(1))) == "Threshold(1, tensor=tensor([0.]))"

    class Unknown(Callback):
        def __init__(self, model: Any, every: int = 1) -> None:
            self.stored, self.every = model, every

    assert repr(Unknown(object(), every=2)) == "Unknown(model=..., every=2)"
