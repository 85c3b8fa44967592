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


@pytest.mark.parametrize(("total", "start", "end"), [(2, 0.1, 0.0), (3, 0.5, 0.01), (11, 0.1, 0.001), (64, 1.0, 0.2)])
def test_cosine_matches_torch_cosine_annealing_step_by_step(total: int, start: float, end: float) -> None:
    scheduler = lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=total - 1, eta_min=end)  # noqa: E731
    assert values(cosine(start, end), total) == pytest.approx(torch_lrs(scheduler, total, start), rel=1e-9, abs=1e-15)
    # steps= spans fewer steps than the run: torch's T_max is steps - 1 there, then it rises again.
    bounded = values(cosine(start, end, steps=total), total + 3)
    assert bounded[:total] == pytest.approx(torch_lrs(scheduler, total, start), rel=1e-9, abs=1e-15)
    assert bounded[total:] == [end] * 3


@pytest.mark.parametrize(("every", "gamma", "total"), [(1, 0.5, 6), (3, 0.5, 10), (4, 0.1, 17), (7, 0.9, 30)])
def test_step_decay_matches_torch_step_lr_step_by_step(every: int, gamma: float, total: int) -> None:
    expected = torch_lrs(lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=every, gamma=gamma), total, 0.2)
    assert values(step_decay(0.2, every=every, gamma=gamma), total) == pytest.approx(expected, rel=1e-12)


def torch_one_cycle(total: int, **kwargs: float) -> tuple[list[float], list[float]]:
    """OneCycleLR's learning rate and momentum at each step of a run of ``total`` steps."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, total_steps=total, **kwargs)
    lrs, momenta = [], []
    for _ in range(total):
        lrs.append(optimizer.param_groups[0]["lr"])
        momenta.append(optimizer.param_groups[0]["momentum"])
        optimizer.step()
        scheduler.step()
    return lrs, momenta


def test_one_cycle_defaults_are_torch_one_cycle_lr_for_ten_steps() -> None:
    # The case from the issue: the peak at step 2 as in torch (it was at step 3), 0.052 at step 1.
    lrs, _ = torch_one_cycle(10, max_lr=0.1)
    found = values(one_cycle(0.1), 10)
    assert found == lrs
    assert found.index(max(found)) == 2 and found[1] == pytest.approx(0.052)


@pytest.mark.parametrize("total", [1, 2, 3, 4, 5, 7, 10, 11, 33, 100, 257])
@pytest.mark.parametrize(
    ("peak", "warmup", "div_factor", "final_div_factor"),
    [(0.1, 0.3, 25.0, 1e4), (1.0, 0.25, 10.0, 100.0), (3e-3, 0.5, 25.0, 1e4), (0.5, 0.05, 4.0, 2.0), (0.2, 0.9, 5.0, 1e3)],
)
def test_one_cycle_equals_torch_one_cycle_lr_at_every_step(
    total: int, peak: float, warmup: float, div_factor: float, final_div_factor: float
) -> None:
    if warmup * total == 1:
        pytest.skip("torch divides by zero when the rise ends at step 0")
    lrs, momenta = torch_one_cycle(
        total, max_lr=peak, pct_start=warmup, div_factor=div_factor, final_div_factor=final_div_factor
    )
    start = peak / div_factor
    assert values(one_cycle(peak, start=start, end=start / final_div_factor, warmup=warmup), total) == lrs
    # Momentum, which torch cycles from 0.95 down to 0.85 and back by default:
    assert values(one_cycle(0.85, start=0.95, end=0.95, warmup=warmup), total) == momenta


def test_one_cycle_holds_its_end_past_the_run_and_peaks_when_the_rise_is_one_step() -> None:
    schedule = one_cycle(1.0, start=0.1, end=0.01, warmup=0.1)
    assert schedule(10, 10) == schedule(50, 10) == pytest.approx(0.01)
    assert schedule(0, 10) == 1.0  # the rise ends at step 0.1 * 10 - 1 = 0, where torch divides by zero


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
