"""The callback graph as a picture: Mermaid and DOT of the plans' own edges and reasons."""

from __future__ import annotations

import shutil
from typing import Any

import pytest

from cadence import WRITE, Callback, Metrics, MetricsPrinter, RunFirst, on
from cadence.events import BatchEnd, Event, EpochEnd
from cadence.graph.render import dot, mermaid, svg
from cadence.phases import Phase, TrainingPhase, ValidationPhase
from cadence.testing import make_test_learner


class Scale(Callback):
    state_access = {"batch.loss": WRITE}

    @on(BatchEnd, phase=TrainingPhase)
    def scale(self, event: Event, phase: Phase, learner: Any) -> None: ...


class Clip(Callback):
    state_access = {"batch.loss": WRITE}

    @on(BatchEnd, phase=TrainingPhase)
    def clip(self, event: Event, phase: Phase, learner: Any) -> None: ...

    def resolve_conflict(self, other: Callback) -> Any:
        return RunFirst(self) if isinstance(other, Scale) else NotImplemented


def test_edges_carry_their_reasons_and_resolutions_are_marked() -> None:
    learner = make_test_learner(Scale(), Clip())
    (plan,) = learner.plans(BatchEnd, TrainingPhase)
    (edge,) = plan.edges
    assert (plan.labels[edge.before], plan.labels[edge.after], edge.resolved) == ("Clip.clip", "Scale.scale", True)
    text = mermaid([plan])
    assert '["1. Clip.clip"]' in text and '["2. Scale.scale"]' in text
    assert 'plan0_0 ==>|"resolve_conflict: Clip and Scale both write batch.loss; resolve_conflict says RunFirst(Clip)"| plan0_1' in text
    graph = dot([plan])
    assert 'plan0_0 -> plan0_1 [label="resolve_conflict: Clip and Scale both write batch.loss;' in graph
    assert "style=bold, color=red" in graph and 'label="BatchEnd in TrainingPhase";' in graph


def test_the_default_set_draws_every_plan_with_its_reasons() -> None:
    learner = make_test_learner(MetricsPrinter(), Metrics(), default_callbacks=True)
    plans = learner.plans()
    text = mermaid(plans)
    assert text.count("subgraph ") == len(plans) == learner.explain().count(":\n")
    assert '-->|"Metrics writes cbstate.metrics, MetricsPrinter reads cbstate.metrics"|' in text
    assert dot(plans).count("subgraph cluster_") == len(plans)
    assert all(not edge.resolved for plan in plans for edge in plan.edges)


def test_labels_with_quotes_are_escaped() -> None:
    plan = make_test_learner(MetricsPrinter(), Metrics()).plans(EpochEnd, ValidationPhase)[0]
    odd = type(plan)(**{**{f: getattr(plan, f) for f in plan.__dataclass_fields__}, "labels": ('A"<b>', "B")})
    assert '["1. A#quot;#lt;b#gt;"]' in mermaid([odd])
    assert 'label="1. A\\"<b>"' in dot([odd])


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed (not in CI)")
def test_svg_through_graphviz() -> None:
    picture = svg(make_test_learner(MetricsPrinter(), Metrics()).plans())
    assert picture.lstrip().startswith(b"<?xml") and b"MetricsPrinter.validation_end" in picture


def test_svg_without_graphviz_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"SVG needs Graphviz's dot program, which is not on PATH. Install Graphviz"):
        svg([])


def test_the_docs_picture_of_the_default_callbacks_is_current() -> None:
    import re
    from pathlib import Path

    page = (Path(__file__).resolve().parents[2] / "docs" / "graph-picture.md").read_text()
    (block,) = re.findall(r"```mermaid\n(.*?)```", page, re.DOTALL)
    assert block.rstrip("\n") == mermaid(make_test_learner(default_callbacks=True).plans())
