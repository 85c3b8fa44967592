"""Plots as PNG with matplotlib (``cadence[plots]``): learning curves and the ``lr`` curve.

Drawn on a ``matplotlib.figure.Figure`` of its own, which renders with Agg, never through
``pyplot``: matplotlib's global backend is left alone, and no display is needed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cadence.loggers.extras import require

__all__ = ["plot_learning_curves", "plot_curve"]


def plot_learning_curves(epochs: Mapping[str, Sequence[float]], folder: str | os.PathLike[str]) -> list[Path]:
    """One PNG per metric in ``folder`` (``loss.png``, ``accuracy.png``), each phase's epoch
    values as one line (train against valid), from ``cbstate.metrics.epochs``.

    Returns:
        The files written, sorted.

    Raises:
        MissingExtraError: matplotlib is not installed.

    Example:
        >>> import tempfile
        >>> paths = plot_learning_curves({"train/loss": [1.0, 0.5], "valid/loss": [1.1, 0.7]}, tempfile.mkdtemp())
        >>> [p.name for p in paths]
        ['loss.png']
    """
    require("plot_learning_curves", "plots", "matplotlib")
    by_metric: dict[str, dict[str, Sequence[float]]] = {}
    for key, values in epochs.items():
        phase, _, name = key.rpartition("/")
        if values:
            by_metric.setdefault(name, {})[phase or "value"] = values
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, lines in sorted(by_metric.items()):
        path = folder / f"{_file_name(name)}.png"
        curves = {phase: (list(range(1, len(v) + 1)), list(v)) for phase, v in lines.items()}
        _save(path, curves, title=name, x_label="epoch", y_label=name)
        written.append(path)
    return written


def plot_curve(
    steps: Sequence[int], values: Mapping[str, Sequence[float]], path: str | os.PathLike[str], *, title: str
) -> Path:
    """One PNG at ``path`` with a line per entry of ``values`` against ``steps`` (the training
    step), e.g. the learning rate of each param group.

    Raises:
        MissingExtraError: matplotlib is not installed.
    """
    require("plot_curve", "plots", "matplotlib")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save(path, {name: (list(steps), list(v)) for name, v in values.items()}, title=title, x_label="step", y_label=title)
    return path


def _save(path: Path, curves: Mapping[str, tuple[list[int], list[float]]], *, title: str, x_label: str, y_label: str) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4), dpi=100, layout="constrained")
    axes: Any = figure.add_subplot()
    for label, (x, y) in curves.items():
        axes.plot(x, y, marker="o" if len(x) < 30 else None, label=label)
    axes.set(title=title, xlabel=x_label, ylabel=y_label)
    axes.grid(alpha=0.3)
    axes.legend()  # also for one line: it says which phase (or param group) it is
    temporary = path.with_name(f".{path.name}.tmp")
    figure.savefig(temporary, format="png")
    os.replace(temporary, path)  # a viewer never sees half a file


def _file_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "metric"
