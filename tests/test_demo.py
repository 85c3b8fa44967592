"""``make demo``'s script, run as a user runs it: its output and the run folder it writes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

DEMO = Path(__file__).resolve().parents[1] / "examples" / "demo.py"


def test_the_demo_trains_writes_every_artefact_and_says_how_to_open_them(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(DEMO)], cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "Final validation accuracy:" in out
    assert "Stopped early: None" not in out  # a run that ran every epoch prints no stop line
    (run,) = (tmp_path / "runs").iterdir()
    assert f"Everything this run wrote is in runs/{run.name}/" in out
    assert any((run / "tensorboard").rglob("events.out.tfevents.*"))
    assert (run / "mlflow.db").stat().st_size > 0
    header = (run / "metrics.csv").read_text().splitlines()[0]
    assert header == "step,epoch,phase,name,value"
    assert sorted(p.name for p in (run / "plots").glob("*.png"))
    assert any((run / "checkpoints").iterdir())
    assert (run / "callback-graph.mmd").read_text().startswith(("flowchart", "graph"))
    assert (run / "callback-graph.dot").read_text().startswith("digraph")
