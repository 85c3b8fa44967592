"""LearningCurves: drawing stays a small part of the run, the lr record stays small, and every
plot says which line is which."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cadence import LearningCurves, Metrics, Recorder, Scheduler
from cadence.callbacks import learning_curves
from cadence.schedules import linear
from cadence.testing import make_test_learner


class Clock:
    """A clock that moves only when told to: ``step`` seconds for every reading."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_epoch_ends_redraw_only_while_drawing_stays_a_tenth_of_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    curves = LearningCurves(tmp_path)
    drawn: list[int] = []
    real_save = curves.save
    monkeypatch.setattr(curves, "save", lambda cbstate=None: drawn.append(len(cbstate.metrics.epochs["valid/loss"])) or real_save(cbstate))
    # Each reading moves the clock 1 s: a drawing "takes" 1 s, and each epoch end that does
    # not draw 1 s, so ten epochs must pass before the next drawing.
    monkeypatch.setattr(learning_curves, "_clock", Clock(1.0))
    make_test_learner(curves, Metrics(), Recorder(), n_batches=2).fit(12)
    assert drawn == [1, 11, 12]  # the first epoch, once the budget allows again, and FitEnd


@pytest.mark.parametrize("validates", [True, False])
def test_each_epoch_is_drawn_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, validates: bool) -> None:
    monkeypatch.setattr(learning_curves, "_clock", Clock(0.0))  # drawing costs nothing
    curves = LearningCurves(tmp_path)
    saved: list[int] = []
    real_save = curves.save
    monkeypatch.setattr(curves, "save", lambda cbstate=None: saved.append(1) or real_save(cbstate))
    learner = make_test_learner(curves, Metrics(), Recorder(), n_batches=2)
    batches = learner.data[0]
    learner.fit(2, data=(batches, batches if validates else None))
    assert len(saved) == 3  # at each epoch's end (after its validation, not also before it), and at FitEnd


def test_the_lr_record_stays_bounded_however_long_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(learning_curves, "_MAX_POINTS", 8)
    curves = LearningCurves(tmp_path, every_epoch=False)
    learner = make_test_learner(curves, Scheduler(lr=linear(0.1, 0.0)), Metrics(), Recorder(), n_batches=25)
    learner.fit(4)  # 100 steps
    state = curves.state_dict()
    assert len(state["steps"]) < 16 and state["stride"] == 8
    assert state["steps"] == list(range(8, 101, 8))  # evenly spaced, first to last
    assert state["lr"]["lr/group0"][0] == pytest.approx(0.1 * (1 - 7 / 99))
    again = LearningCurves(tmp_path)
    again.load_state_dict(state)
    assert again.state_dict() == state


def test_every_plot_has_a_legend_naming_its_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from matplotlib.figure import Figure

    from cadence.loggers.plots import plot_learning_curves

    legends: dict[str, list[str]] = {}
    real_savefig = Figure.savefig

    def savefig(self: Any, path: Any, **kwargs: Any) -> None:
        axes = self.axes[0]
        legends[axes.get_title()] = [t.get_text() for t in axes.get_legend().get_texts()]
        real_savefig(self, path, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    plot_learning_curves({"train/loss": [1.0, 0.5], "valid/loss": [1.1, 0.6], "valid/accuracy": [0.5, 0.7]}, tmp_path)
    assert legends == {"loss": ["train", "valid"], "accuracy": ["valid"]}


def test_save_before_a_fit_says_what_it_needs() -> None:
    with pytest.raises(ValueError, match=r'LearningCurves\.save\(\) has no folder yet: it saves into the run folder, which it learns when fit begins\. Call it after fit has begun, or give a folder: LearningCurves\("plots"\)\.'):
        LearningCurves().save()
