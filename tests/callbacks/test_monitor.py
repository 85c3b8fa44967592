"""The monitored key and mode, checked the same way for EarlyStopping, ReduceLROnPlateau and
Checkpointer: at construction, when the learner is built, and when the phase's first epoch ends."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from cadence import Checkpointer, EarlyStopping, Metrics, MetricSpec, MissingStateError, ReduceLROnPlateau
from cadence.callback import Callback, on
from cadence.events import EpochEnd
from cadence.phases import Phase, TrainingPhase
from cadence.checkpointing.files import list_checkpoints
from cadence.testing import make_test_learner, regression_batches
from helpers import ScriptedMetrics

OWNERS = {
    "EarlyStopping": (lambda key, folder, **kw: EarlyStopping(key, **kw), 'EarlyStopping\\(monitor="{key}"\\)'),
    "ReduceLROnPlateau": (lambda key, folder, **kw: ReduceLROnPlateau(key, **kw), 'ReduceLROnPlateau\\(monitor="{key}"\\)'),
    "Checkpointer": (
        lambda key, folder, **kw: Checkpointer(folder, keep_best=1, monitor=key, **kw),
        'Checkpointer\\("checkpoints", keep_best=1, monitor="{key}"\\)',
    ),
}


def owner(name: str, key: str, tmp_path: Path | None = None, **kwargs: Any) -> Callback:
    return OWNERS[name][0](key, tmp_path if tmp_path is not None else "unused", **kwargs)


@pytest.mark.parametrize("name", OWNERS)
def test_a_key_metrics_will_not_write_is_refused_when_the_learner_is_built(name: str) -> None:
    metrics = Metrics(MetricSpec(lambda y_pred, y: y_pred.mean(), name="accuracy"))
    fix = OWNERS[name][1].format(key="valid/accuracy")
    with pytest.raises(
        MissingStateError,
        match=(
            rf"^{name} monitors 'valid/acuracy', but no callback produces it; cbstate.metrics will have "
            rf".*valid/accuracy, valid/loss.*\.\nDid you mean {fix}\? Monitor one of those keys, or add the "
            rf"metric to Metrics, e\.g\. Metrics\(MetricSpec\(my_metric, phases=\"valid\"\)\)\."
        ),
    ):
        make_test_learner(owner(name, "valid/acuracy"), metrics)


@pytest.mark.parametrize("name", OWNERS)
def test_a_key_missing_when_its_phase_first_ends_is_an_error(name: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # The producer plans no keys, so only the epoch end can tell.
    learner = make_test_learner(owner(name, "valid/scor", tmp_path), ScriptedMetrics([3, 2, 1]), n_batches=2)
    fix = OWNERS[name][1].format(key="valid/score")
    with caplog.at_level(logging.WARNING), pytest.raises(
        MissingStateError,
        match=(
            rf"^{name} monitors 'valid/scor', but the valid epoch ended without it; cbstate.metrics has "
            rf"train/score, valid/score\.\nDid you mean {fix}\? Monitor one of those keys"
        ),
    ) as raised:
        learner.fit(3)
    assert learner.cbstate.metrics.epochs == {"train/score": [3], "valid/score": [3]}  # the first epoch
    where = ("EpochBegin", "TrainingPhase") if name == "ReduceLROnPlateau" else ("EpochEnd", "ValidationPhase")
    assert any(all(w in note for w in where) for note in raised.value.__notes__)
    if name == "Checkpointer":
        assert list_checkpoints(tmp_path) == []  # refused before it saved with no value
    assert caplog.text == ""  # the error says it all: no "saw no new value" from FitEnd


class TrainScores(ScriptedMetrics):
    """Writes train/score only: the validation epochs write no metric at all."""

    @on(EpochEnd, phase=TrainingPhase)
    def add(self, event: Any, phase: Phase, learner: Any) -> None:
        super().add(event, phase, learner)


@pytest.mark.parametrize(
    ("key", "producer", "what", "fix"),
    [
        ("val/score", ScriptedMetrics, r"no phase is named 'val' \(fit runs train and valid\), so nothing writes it; after the first epoch cbstate\.metrics has train/score, valid/score", "valid/score"),
        ("valid/score", TrainScores, r"the valid epoch ended without it; cbstate\.metrics has train/score", "train/score"),
    ],
    ids=["no such phase", "the phase wrote nothing"],
)
@pytest.mark.parametrize("name", OWNERS)
def test_a_key_no_phase_wrote_is_an_error_once_the_first_epoch_has_ended(
    name: str, key: str, producer: type[ScriptedMetrics], what: str, fix: str, tmp_path: Path
) -> None:
    learner = make_test_learner(owner(name, key, tmp_path), producer([3, 2, 1]), n_batches=2)
    hint = OWNERS[name][1].format(key=fix)
    with pytest.raises(
        MissingStateError,
        match=(
            rf"^{name} monitors '{key}', but {what}\.\nDid you mean {hint}\? Monitor one of those keys, or add "
            rf"the metric to Metrics, e\.g\. Metrics\(MetricSpec\(my_metric, phases=\"valid\"\)\)\."
        ),
    ):
        learner.fit(3)
    assert len(learner.cbstate.metrics.epochs["train/score"]) == 1  # after the first epoch
    if name == "Checkpointer":
        assert list_checkpoints(tmp_path) == []  # refused before it saved with no value


@pytest.mark.parametrize("name", OWNERS)
def test_a_key_of_a_phase_that_never_ran_is_not_an_error(name: str, tmp_path: Path) -> None:
    learner = make_test_learner(owner(name, "valid/scor", tmp_path), ScriptedMetrics([3, 2, 1]), n_batches=2)
    assert learner.fit(2, data=(regression_batches(2), None)).stopped is None


@pytest.mark.parametrize("name", OWNERS)
def test_a_mode_that_is_not_min_or_max_is_refused_with_the_fix(name: str) -> None:
    with pytest.raises(ValueError, match=rf"^{name}\(mode='best'\): expected \"min\" \(lower is better, as for a loss\) or \"max\" \(higher is better, as for accuracy\); write e\.g\. {name}\(mode=\"min\"\)\.$"):
        owner(name, "valid/loss", mode="best")


@pytest.mark.parametrize("name", OWNERS)
def test_a_key_without_a_phase_is_refused_with_the_fix(name: str) -> None:
    fix = OWNERS[name][1].format(key="valid/loss")
    with pytest.raises(ValueError, match=rf"^{name}\(monitor='accuracy'\): keys are \"<phase>/<metric>\", e\.g\. {fix}\.$"):
        owner(name, "accuracy")


def test_the_default_checkpointer_key_is_not_required(tmp_path: Path) -> None:
    # Without keep_best, "valid/loss" is only recorded in each checkpoint's metadata.
    learner = make_test_learner(Checkpointer(tmp_path), ScriptedMetrics([3, 2]), n_batches=2)
    assert learner.fit(2).stopped is None
    assert len(list_checkpoints(tmp_path)) == 2


def test_another_checkpointer_key_is_checked_without_keep_best(tmp_path: Path) -> None:
    with pytest.raises(MissingStateError, match=r"^Checkpointer monitors 'valid/los', but no callback produces it"):
        make_test_learner(Checkpointer(tmp_path, monitor="valid/los"), Metrics())
