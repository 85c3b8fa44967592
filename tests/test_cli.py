"""python -m cadence explain|check module:function: plans, pictures, every declaration error,
one-line usage errors and the exit codes."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cadence.cli import main

MODULE = textwrap.dedent(
    """
    import torch
    from cadence import READ, WRITE, Callback, Learner, Scheduler, on
    from cadence.events import BatchEnd
    from cadence.schedules import cosine

    class Doubler(Callback):
        state_access = {"batch.loss": WRITE}

        @on(BatchEnd)
        def double(self, event, phase, learner): ...

    class Reader(Callback):
        state_access = {"cbstate.nothing": READ}

    def good():
        model = torch.nn.Linear(2, 1)
        return Learner(model, torch.nn.functional.mse_loss, callbacks=[Scheduler(lr=cosine(0.1, 0.01))])

    def bad():
        model = torch.nn.Linear(2, 1)
        return Learner(model, torch.nn.functional.mse_loss, callbacks=[Doubler(), Doubler(), Reader()])

    def broken():
        raise RuntimeError("no data here")

    def number():
        return 3

    not_a_function = 3
    """
)


@pytest.fixture
def module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "cli_learners.py").write_text(MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "cli_learners"


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_explain_prints_the_plans_and_writes_the_picture(module: str, tmp_path: Path) -> None:
    code, out, _ = run("explain", f"{module}:good", "--event", "BatchEnd", "--output", "pictures/graph")
    assert code == 0
    assert out.startswith("BatchEnd in TrainingPhase:\n  1. Scheduler.batch_end")
    assert "Wrote pictures/graph.mmd, pictures/graph.dot" in out
    assert (tmp_path / "pictures" / "graph.mmd").read_text().startswith("flowchart TB")
    assert (tmp_path / "pictures" / "graph.dot").read_text().startswith("digraph cadence {")


def test_check_of_a_clean_learner(module: str) -> None:
    code, out, _ = run("check", f"{module}:good")
    assert (code, out) == (0, f"cadence check: {module}:good is clean: 6 callbacks, 9 plans, no declaration errors.\n")


def test_check_reports_every_declaration_error(module: str) -> None:
    code, out, _ = run("check", f"{module}:bad")
    assert code == 1
    assert out.startswith(f"cadence check: {module}:bad: 2 declaration errors\n")
    assert "1. MissingStateError: Reader reads cbstate.nothing, but no callback writes it." in out
    assert "2. ConflictError: Write conflict between Doubler#1 and Doubler#2 at BatchEnd in TrainingPhase:" in out
    assert "   Also at BatchEnd in ValidationPhase." in out  # one conflict, in two plans
    assert "def resolve_conflict(self, other):" in out


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (("check", "nowhere:good"), 2, "cadence check: cannot import 'nowhere': ModuleNotFoundError: No module named 'nowhere'"),
        (("check", "cli_learners:missing"), 2, "cadence check: cli_learners.missing does not exist; give a function that returns a Learner."),
        (("check", "cli_learners:number"), 2, "cadence check: cli_learners:number returned int, not a Learner; make it return the Learner it builds."),
        (("check", "cli_learners"), 2, "cadence check: expected module:function (e.g. train:make_learner), got 'cli_learners'."),
        (("check", "cli_learners:broken"), 1, "cadence check: cli_learners:broken raised RuntimeError: no data here"),
        (("explain", "cli_learners:good", "--phase", "Nope"), 2, "cadence explain: no phase named 'Nope'; the built-in ones are Phase, TrainingPhase, ValidationPhase."),
        (("check", "cli_learners:not_a_function"), 2, "cadence check: cli_learners.not_a_function is not callable; give a function that returns a Learner."),
        (("check", "missing.py:good"), 2, "cadence check: cannot import 'missing.py': no such file."),
    ],
)
def test_errors_are_one_line_with_their_exit_code(module: str, argv: tuple[str, ...], code: int, message: str) -> None:
    got, out, err = run(*argv)
    assert (got, err) == (code, message + "\n") and out == ""


def test_bad_usage_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["frobnicate"]) == 2
    assert "invalid choice: 'frobnicate'" in capsys.readouterr().err


def test_python_dash_m_cadence_with_a_file_path(module: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cadence", "check", "cli_learners.py:bad"], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert done.returncode == 1 and "2 declaration errors" in done.stdout and "Traceback" not in done.stderr


def test_an_unknown_event_lists_the_built_in_ones(module: str) -> None:
    code, out, err = run("explain", f"{module}:good", "--event", "Nope")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith("cadence explain: no event named 'Nope'; the built-in ones are BackwardBegin, BackwardEnd, BatchBegin, BatchEnd,")


def test_a_picture_that_cannot_be_written_is_one_line(module: str, tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a file where the folder should be")
    code, out, err = run("explain", f"{module}:good", "--output", "taken/graph")
    assert code == 1 and "Traceback" not in err
    assert err.startswith("cadence explain: cannot create the folder 'taken': FileExistsError: ") and err.count("\n") == 1


def test_a_failing_dot_is_one_line_and_the_text_pictures_are_written(module: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_folder = tmp_path / "bin"
    bin_folder.mkdir()
    fake = bin_folder / "dot"
    fake.write_text("#!/bin/sh\necho 'Error: syntax error in line 1' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_folder}:{os.environ['PATH']}")
    code, out, err = run("explain", f"{module}:good", "--output", "graph")
    assert code == 1
    assert err == (
        "cadence explain: dot -Tsvg failed (3): Error: syntax error in line 1 (wrote graph.mmd, graph.dot; render the "
        "Mermaid or DOT text elsewhere)\n"
    )
    assert (tmp_path / "graph.mmd").is_file() and (tmp_path / "graph.dot").is_file()
