"""``python -m cadence``: look at a learner's callback graph, or check it, without training.

    python -m cadence explain module:function [--output PREFIX] [--event E] [--phase P]
    python -m cadence check module:function

``module`` is an importable module (``train``, ``pkg.train``) or a file (``scripts/train.py``);
``function`` takes no arguments and returns a ``Learner``. ``explain`` prints the plans (what
``learner.explain()`` prints) and writes the picture: ``PREFIX.mmd`` (Mermaid), ``PREFIX.dot``
(Graphviz) and, where Graphviz's ``dot`` is installed, ``PREFIX.svg``. ``check`` builds the
learner and reports every declaration error. Exit codes: 0 clean, 1 errors found (or the
function raised, or the picture could not be written), 2 bad usage (a module that does not
import, a function that is missing or returns no ``Learner``). Every problem is one line on
standard error, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO

from cadence import events, phases
from cadence.errors import CadenceError
from cadence.graph.check import find_errors
from cadence.graph.render import dot, mermaid, svg
from cadence.learner import Learner

__all__ = ["main"]


class UsageError(Exception):
    """A problem with what was asked for, reported as one line with exit code 2."""


class OutputError(Exception):
    """The picture could not be written (a file, or Graphviz's ``dot``), reported as one line
    with exit code 1."""


class BuildError(Exception):
    """The function raised while building its learner."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(f"{type(error).__name__}: {error}")
        self.error = error


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run the command line; return the exit code."""
    out, err = out or sys.stdout, err or sys.stderr
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:  # argparse printed its usage line
        return 2 if exit.code not in (0, None) else 0
    try:
        if args.command == "explain":
            return _explain(args, out)
        return _check(args, out)
    except UsageError as problem:
        print(f"cadence {args.command}: {problem}", file=err)
        return 2
    except OutputError as problem:
        print(f"cadence {args.command}: {problem}", file=err)
        return 1
    except BuildError as problem:
        print(f"cadence {args.command}: {args.target} raised {problem}", file=err)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cadence", description="Look at or check a learner's callbacks.")
    commands = parser.add_subparsers(dest="command", required=True)
    explain = commands.add_parser("explain", help="print the plans and write the callback graph as a picture")
    explain.add_argument("target", help="module:function, the function returning a Learner")
    explain.add_argument("--output", default="callback-graph", help="file name without suffix (default: callback-graph)")
    explain.add_argument("--event", help="only this event, e.g. BatchEnd")
    explain.add_argument("--phase", help="only this phase, e.g. TrainingPhase")
    check = commands.add_parser("check", help="build the learner and report every declaration error")
    check.add_argument("target", help="module:function, the function returning a Learner")
    return parser


def _explain(args: argparse.Namespace, out: TextIO) -> int:
    event = _named(args.event, events, "event", events.Event) if args.event else None
    phase = _named(args.phase, phases, "phase", phases.Phase) if args.phase else None
    learner = _learner(args.target)
    print(learner.explain(event, phase), file=out)
    plans = learner.plans(event, phase)
    prefix = Path(args.output)
    try:
        prefix.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create the folder {str(prefix.parent)!r}: {type(error).__name__}: {error}") from error
    written = [_write(prefix.with_name(prefix.name + ".mmd"), mermaid(plans)), _write(prefix.with_name(prefix.name + ".dot"), dot(plans))]
    if shutil.which("dot") is not None:
        try:
            picture = svg(plans)
        except (RuntimeError, OSError, subprocess.SubprocessError) as error:
            raise OutputError(
                f"{error} (wrote {', '.join(str(p) for p in written)}; render the Mermaid or DOT text elsewhere)"
            ) from error
        written.append(_write(prefix.with_name(prefix.name + ".svg"), picture))
    note = "" if len(written) == 3 else " (install Graphviz for an SVG too)"
    print(f"\nWrote {', '.join(str(p) for p in written)}{note}.", file=out)
    return 0


def _check(args: argparse.Namespace, out: TextIO) -> int:
    try:
        learner = _learner(args.target)
    except BuildError as problem:
        if not isinstance(problem.error, CadenceError) or not problem.error.callbacks:
            raise
        errors = find_errors(problem.error.callbacks) or [problem.error]
    else:
        errors = find_errors(learner.callbacks)
        if not errors:
            plans = learner.plans()
            print(
                f"cadence check: {args.target} is clean: {len(learner.callbacks)} callbacks, "
                f"{len(plans)} plans, no declaration errors.",
                file=out,
            )
            return 0
    print(f"cadence check: {args.target}: {len(errors)} declaration error{'s' * (len(errors) != 1)}", file=out)
    for number, error in enumerate(errors, start=1):
        first, *rest = str(error).splitlines() or [""]
        print(f"\n{number}. {type(error).__name__}: {first}", file=out)
        for line in [*rest, *getattr(error, "__notes__", ())]:
            print(f"   {line}" if line else "", file=out)
    return 1


def _learner(target: str) -> Learner:
    module_name, colon, function_name = target.rpartition(":")
    if not colon or not module_name or not function_name:
        raise UsageError(f"expected module:function (e.g. train:make_learner), got {target!r}.")
    module = _import(module_name)
    function = getattr(module, function_name, None)
    if not callable(function):
        found = "is not callable" if function is not None else "does not exist"
        raise UsageError(f"{module_name}.{function_name} {found}; give a function that returns a Learner.")
    try:
        learner = function()
    except Exception as error:
        raise BuildError(error) from error
    if not isinstance(learner, Learner):
        raise UsageError(
            f"{target} returned {type(learner).__name__}, not a Learner; make it return the Learner it builds."
        )
    return learner


def _import(name: str) -> ModuleType:
    try:
        if name.endswith(".py") or "/" in name:
            path = Path(name)
            if not path.is_file():
                raise UsageError(f"cannot import {name!r}: no such file.")
            spec = importlib.util.spec_from_file_location(path.stem, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules.setdefault(path.stem, module)
            spec.loader.exec_module(module)
            return module
        if "" not in sys.path and "." not in sys.path:
            sys.path.insert(0, "")  # the current folder, as `python -m` has it
        return importlib.import_module(name)
    except UsageError:
        raise
    except Exception as error:
        raise UsageError(f"cannot import {name!r}: {type(error).__name__}: {error}") from error


def _named(name: str, module: ModuleType, what: str, base: type) -> Any:
    found = getattr(module, name, None)
    if not (isinstance(found, type) and issubclass(found, base)):
        known = ", ".join(n for n in module.__all__ if isinstance(getattr(module, n), type) and issubclass(getattr(module, n), base))
        raise UsageError(f"no {what} named {name!r}; the built-in ones are {known}.")
    return found


def _write(path: Path, content: str | bytes) -> Path:
    try:
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content + "\n", encoding="utf-8")
    except OSError as error:
        raise OutputError(f"cannot write {str(path)!r}: {type(error).__name__}: {error}") from error
    return path
