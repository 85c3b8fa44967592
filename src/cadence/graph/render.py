"""The callback graph as a picture: Mermaid and Graphviz DOT text of a learner's plans, and
SVG through Graphviz's ``dot`` where it is installed.

Each plan (one (event, phase)) is a box; its nodes are the handlers in run order, numbered
as ``explain()`` numbers them; each edge is labelled with its reasons. An edge that a
``resolve_conflict`` answer added is drawn thick (Mermaid ``==>``, DOT bold red) and its
label starts with ``resolve_conflict:``. The edges are the plans' own (``Plan.edges``):
nothing is computed again.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence

from cadence.graph.builder import Plan

__all__ = ["dot", "mermaid", "svg"]


def mermaid(plans: Sequence[Plan]) -> str:
    """Mermaid flowchart text of ``plans`` (e.g. ``learner.plans()``).

    Example:
        >>> from cadence import Metrics, MetricsPrinter
        >>> from cadence.events import EpochEnd
        >>> from cadence.phases import ValidationPhase
        >>> from cadence.testing import make_test_learner
        >>> learner = make_test_learner(MetricsPrinter(), Metrics())
        >>> print(mermaid(learner.plans(EpochEnd, ValidationPhase)))
        flowchart TB
          subgraph plan0["EpochEnd in ValidationPhase"]
            direction TB
            plan0_0["1. Metrics.epoch_end"]
            plan0_1["2. MetricsPrinter.validation_end"]
            plan0_0 -->|"Metrics writes cbstate.metrics, MetricsPrinter reads cbstate.metrics"| plan0_1
          end
    """
    lines = ["flowchart TB"]
    for index, plan in enumerate(plans):
        lines.append(f'  subgraph plan{index}["{_mermaid_text(_title(plan))}"]')
        lines.append("    direction TB")
        for position, label in enumerate(plan.labels):
            lines.append(f'    plan{index}_{position}["{position + 1}. {_mermaid_text(label)}"]')
        for edge in plan.edges:
            arrow = "==>" if edge.resolved else "-->"
            text = _mermaid_text(_edge_label(edge.reasons, edge.resolved))
            lines.append(f'    plan{index}_{edge.before} {arrow}|"{text}"| plan{index}_{edge.after}')
        lines.append("  end")
    return "\n".join(lines)


def dot(plans: Sequence[Plan]) -> str:
    """Graphviz DOT text of ``plans``: one cluster per plan.

    Example:
        >>> from cadence import Metrics, Recorder
        >>> from cadence.events import BatchEnd
        >>> from cadence.phases import TrainingPhase
        >>> from cadence.testing import make_test_learner
        >>> text = dot(make_test_learner(Metrics(), Recorder()).plans(BatchEnd, TrainingPhase))
        >>> print(text.splitlines()[0])
        digraph cadence {
    """
    lines = [
        "digraph cadence {",
        "  rankdir=TB;",
        '  node [shape=box, style=rounded, fontname="Helvetica"];',
        '  edge [fontname="Helvetica", fontsize=9];',
    ]
    for index, plan in enumerate(plans):
        lines.append(f"  subgraph cluster_{index} {{")
        lines.append(f'    label="{_dot_text(_title(plan))}";')
        for position, label in enumerate(plan.labels):
            lines.append(f'    plan{index}_{position} [label="{position + 1}. {_dot_text(label)}"];')
        for edge in plan.edges:
            style = ", style=bold, color=red, fontcolor=red" if edge.resolved else ""
            text = _dot_text(_edge_label(edge.reasons, edge.resolved))
            lines.append(f'    plan{index}_{edge.before} -> plan{index}_{edge.after} [label="{text}"{style}];')
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines)


def svg(plans: Sequence[Plan], *, timeout: float = 60.0) -> bytes:
    """The DOT picture of ``plans`` rendered to SVG by Graphviz's ``dot`` program.

    Raises:
        FileNotFoundError: ``dot`` is not on PATH (install Graphviz, e.g. ``apt-get install
            graphviz``, or render the Mermaid or DOT text elsewhere).
        RuntimeError: ``dot`` failed; the message has its error output.
    """
    program = shutil.which("dot")
    if program is None:
        raise FileNotFoundError(
            "SVG needs Graphviz's dot program, which is not on PATH. Install Graphviz (e.g. "
            "apt-get install graphviz, brew install graphviz), or use the Mermaid or DOT text."
        )
    done = subprocess.run([program, "-Tsvg"], input=dot(plans).encode(), capture_output=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"dot -Tsvg failed ({done.returncode}): {done.stderr.decode(errors='replace').strip()}")
    return done.stdout


def _title(plan: Plan) -> str:
    return f"{plan.event.__name__} in {plan.phase.__name__}"


def _edge_label(reasons: Sequence[str], resolved: bool) -> str:
    text = "; ".join(reasons)
    return f"resolve_conflict: {text}" if resolved else text


def _mermaid_text(text: str) -> str:
    # Mermaid labels are quoted; entity codes keep quotes and brackets from ending them.
    return text.replace("&", "#amp;").replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")


def _dot_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')
