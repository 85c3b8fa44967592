"""The package layout: user-facing concepts at the top, machinery in wings, no import circles."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src" / "cadence"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Module -> the cadence modules it imports at module level (TYPE_CHECKING blocks included).

    Importing ``cadence.lifecycle.loads`` from outside ``cadence.lifecycle`` runs the package's
    ``__init__.py`` first, so that package counts as imported too (the root's aside)."""
    modules = {_module_name(p): p for p in SOURCE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cadence"):
                # "from cadence.graph import Plan" imports the package; "from cadence import X" the root.
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("cadence"))
        packages = {p for m in found for p in _packages_above(m) if not (name == p or name.startswith(p + "."))}
        graph[name] = {m for m in found | packages if m in modules and m != name}
    return graph


def _packages_above(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(2, len(parts))]


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        stack.pop()
        return []

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return []


def test_the_wings_have_no_import_circles() -> None:
    graph = _imports()
    # The root package re-exports everything, and the callbacks import the root's public names:
    # that circle is the public API's, not the machinery's. Every other circle is a defect.
    without_root = {name: {m for m in deps if m != "cadence"} for name, deps in graph.items() if name != "cadence"}
    assert _cycle(without_root) == []


@pytest.mark.parametrize(
    ("importer", "imported"),
    [
        ("cadence.executors.protocol", "cadence.executors.threaded"),
        ("cadence.executors.serial", "cadence.executors.threaded"),
        ("cadence.checkpointing.saver", "cadence.checkpointing.resume"),
    ],
)
def test_the_circles_that_existed_are_open(importer: str, imported: str) -> None:
    assert imported not in _imports()[importer]


WINGS = ["graph", "executors", "checkpointing", "loggers", "distributed", "lifecycle", "introspection", "inputs"]
CONCEPTS = ["events", "phases", "errors", "state", "access", "callback", "learner", "schedules", "testing"]
#: What the Learner's methods are about (fit's result, batches, inference, lr_find, the limits of
#: a run), the command line, and cadence.checkpoint, the public names of the checkpointing wing.
ENTRY_POINTS = ["batches", "fit_result", "inference", "lr_finder", "run_limits", "cli", "__main__", "checkpoint"]


@pytest.mark.parametrize("wing", WINGS)
def test_each_wing_says_what_it_does_and_where_to_start(wing: str) -> None:
    package = importlib.import_module(f"cadence.{wing}")
    doc = package.__doc__ or ""
    assert "open this first" in doc
    named = [line.split("``")[1] for line in doc.splitlines() if line.startswith("- ``")]
    assert named and all((SOURCE / wing / f"{name}.py").is_file() for name in named)


def test_the_user_facing_concepts_stay_at_the_top() -> None:
    for name in CONCEPTS:
        assert (SOURCE / f"{name}.py").is_file(), name


def test_machinery_goes_into_a_wing() -> None:
    # A new top-level module is either a concept a callback author meets (add it to CONCEPTS or
    # ENTRY_POINTS) or the library's machinery (give it a wing, or put it in the wing it serves).
    top = {p.stem for p in SOURCE.glob("*.py")} - {"__init__"}
    assert top == set(CONCEPTS) | set(ENTRY_POINTS)
    assert {p.name for p in SOURCE.iterdir() if (p / "__init__.py").is_file()} == set(WINGS) | {"callbacks"}


def test_the_public_import_paths_still_work() -> None:
    from cadence.checkpoint import CheckpointError, latest_checkpoint, list_checkpoints, load_checkpoint
    from cadence.checkpointing.files import load_checkpoint as loader
    from cadence.executors import Executor, Schedule, SerialExecutor, ThreadedExecutor
    from cadence.graph import CallbackGraph, HandlerCall, Plan

    assert load_checkpoint is loader and issubclass(CheckpointError, Exception)
    assert callable(latest_checkpoint) and callable(list_checkpoints)
    assert isinstance(SerialExecutor(), Executor) and isinstance(ThreadedExecutor(), Executor)
    assert all(obj is not None for obj in (Schedule, CallbackGraph, HandlerCall, Plan))
