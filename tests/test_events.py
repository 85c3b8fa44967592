"""Events: classes named XBegin/XEnd, fired as light instances."""

from __future__ import annotations

import pytest

import cadence.events as events
from cadence.events import (
    BackwardBegin,
    BackwardEnd,
    BatchBegin,
    BatchEnd,
    EpochBegin,
    EpochEnd,
    Event,
    FitBegin,
    FitEnd,
    LossBegin,
)

BUILT_IN = [FitBegin, FitEnd, EpochBegin, EpochEnd, BatchBegin, LossBegin, BackwardBegin, BackwardEnd, BatchEnd]


def test_all_names_the_built_in_events() -> None:
    assert set(events.__all__) == {cls.__name__ for cls in BUILT_IN} | {"Event"}


@pytest.mark.parametrize("event", BUILT_IN)
def test_built_in_events_are_events_named_begin_or_end(event: type[Event]) -> None:
    assert issubclass(event, Event)
    assert event.__name__.endswith(("Begin", "End"))


@pytest.mark.parametrize("event", [EpochEnd, BatchBegin, LossBegin, BackwardBegin, BackwardEnd, BatchEnd, FitEnd])
def test_events_are_slotted_and_carry_nothing(event: type[Event]) -> None:
    instance = event()
    assert repr(instance) == f"{event.__name__}()"
    with pytest.raises(AttributeError):
        instance.anything = 1  # type: ignore[attr-defined]


def test_fit_begin_carries_the_number_of_epochs() -> None:
    assert FitBegin(3).n_epochs == 3
    assert FitBegin().n_epochs == 0


def test_epoch_begin_carries_the_data() -> None:
    data = [(1, 2)]
    assert EpochBegin(data).data is data
    assert EpochBegin().data is None


def test_subclassing_an_event_keeps_it_an_event() -> None:
    class Custom(BatchEnd):
        __slots__ = ()

    assert issubclass(Custom, BatchEnd)
    assert repr(Custom()) == "Custom()"
