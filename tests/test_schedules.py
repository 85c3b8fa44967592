"""The built-in schedules: values, composition, agreement with torch, and errors."""

from __future__ import annotations

import math

import pytest
import torch

from cadence.schedules import Schedule, constant, cosine, linear, linear_warmup, one_cycle, step_decay


def values(schedule: Schedule, total: int) -> list[float]:
    return [schedule(step, total) for step in range(total)]


def torch_lrs(make: object, total: int, lr: float = 0.1) -> list[float]:
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    scheduler = make(optimizer)  # type: ignore[operator]
    found = []
    for _ in range(total):
        found.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return found


def test_every_builtin_is_a_schedule() -> None:
    for schedule in (constant(1.0), linear(1, 0), cosine(1), step_decay(1, every=2), one_cycle(1), linear_warmup(1, 2)):
        assert isinstance(schedule, Schedule)


def test_constant() -> None:
    assert values(constant(0.9), 3) == [0.9, 0.9, 0.9]
    assert repr(constant(0.9)) == "constant(0.9)"


def test_linear_goes_from_start_to_end_over_the_run() -> None:
    assert values(linear(1.0, 0.0), 5) == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert values(linear(1.0, 0.0), 1) == [1.0]


def test_steps_bounds_a_schedule_then_it_holds_its_end() -> None:
    assert values(linear(1.0, 0.0, steps=3), 5) == [1.0, 0.5, 0.0, 0.0, 0.0]
    assert values(cosine(1.0, 0.0, steps=3), 5) == pytest.approx([1.0, 0.5, 0.0, 0.0, 0.0])


def test_cosine_matches_torch_cosine_annealing() -> None:
    total = 11
    expected = torch_lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=total - 1, eta_min=0.001), total)
    assert values(cosine(0.1, 0.001), total) == pytest.approx(expected, rel=1e-6)


def test_step_decay_matches_torch_step_lr() -> None:
    expected = torch_lrs(lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5), 10)
    assert values(step_decay(0.1, every=3, gamma=0.5), 10) == pytest.approx(expected, rel=1e-9)


def test_one_cycle_rises_to_peak_then_falls_to_end() -> None:
    schedule = one_cycle(1.0, warmup=0.25)
    found = values(schedule, 101)
    assert found[0] == pytest.approx(1.0 / 25)
    assert max(found) == pytest.approx(1.0) and found.index(max(found)) == 25
    assert found[-1] == pytest.approx(1.0 / 25 / 1e4)
    assert all(a <= b for a, b in zip(found[:25], found[1:26]))
    assert all(a >= b for a, b in zip(found[25:], found[26:]))


def test_one_cycle_cycles_momentum_the_other_way() -> None:
    found = values(one_cycle(0.85, start=0.95, end=0.95, warmup=0.5), 5)
    assert found == pytest.approx([0.95, 0.9, 0.85, 0.9, 0.95])


def test_linear_warmup_then_a_schedule_over_the_rest_of_the_run() -> None:
    found = values(linear_warmup(cosine(0.1, 0.0), steps=2), 6)
    assert found == pytest.approx([0.0, 0.05, 0.1, 0.075, 0.025, 0.0])
    assert values(linear_warmup(0.1, steps=2, start=0.02), 3) == pytest.approx([0.02, 0.06, 0.1])


def test_a_plain_function_is_a_schedule() -> None:
    assert isinstance(lambda step, total: 0.1, Schedule)
    assert linear_warmup(lambda step, total: 1.0 / (step + 1), steps=1)(3, 10) == 1.0 / 3


def test_reprs_show_the_arguments() -> None:
    assert repr(linear_warmup(cosine(0.1, 0.001), steps=5)) == (
        "linear_warmup(cosine(0.1, 0.001, steps=None), steps=5, start=0.0)"
    )
    assert repr(step_decay(1.0, every=2)) == "step_decay(1.0, every=2, gamma=0.1)"
    assert repr(one_cycle(1.0)).startswith("one_cycle(1.0, start=0.04,")


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: constant("0.1"), TypeError, r"constant\(value=...\) expects a finite number; got '0.1'"),
        (lambda: linear(1.0, math.nan), TypeError, r"linear\(end=...\) expects a finite number"),
        (lambda: cosine(1.0, steps=0), ValueError, r"cosine\(steps=...\) expects an int >= 1 \(or None"),
        (lambda: step_decay(1.0, every=0), ValueError, r"step_decay\(every=...\) expects an int >= 1"),
        (lambda: one_cycle(1.0, warmup=1.0), ValueError, r"strictly between 0 and 1, e.g. 0.3"),
        (lambda: linear_warmup(0.1, steps=0), ValueError, r"linear_warmup\(steps=...\) expects an int >= 1; got 0"),
        (lambda: linear_warmup(True, steps=2), TypeError, r"linear_warmup\(then=...\) expects a finite number"),
    ],
)
def test_invalid_arguments_say_what_is_expected(make: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        make()  # type: ignore[operator]
