"""The run folder, ``runs/<name>/``: where a run's logs, checkpoints and plots go.

The ``RunFolder`` callback puts a ``Run`` in ``cbstate.run``; loggers, plots and a
``Checkpointer`` without a folder of its own find their place in it.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
from pathlib import Path
from typing import Any

__all__ = ["Run"]

log = logging.getLogger(__name__)

_DATED = re.compile(r"^(\d{4}-\d{2}-\d{2})-(\d+)$")


class Run:
    """A run's folder, ``<root>/<name>``, chosen and created when first used.

    Args:
        name: The folder's name, one path component. None: the date and a counter,
            ``2026-12-03-1``, ``2026-12-03-2``, ... (the next one free under ``root``). A run
            that is to be resumed in a new process needs its name, so that both processes
            use the same folder.
        root: The folder the runs go in.

    Example:
        >>> import tempfile
        >>> root = tempfile.mkdtemp()
        >>> first, second = Run(root=root), Run(root=root)
        >>> first.name[-2:], second.name[-2:]  # the counter of the day
        ('-1', '-2')
        >>> Run("digits", root=root).path.name
        'digits'
    """

    def __init__(self, name: str | None = None, *, root: str | os.PathLike[str] = "runs") -> None:
        if name is not None:
            if not isinstance(name, str):
                raise TypeError(f'Run(name=...) expects a folder name such as "digits"; got {type(name).__name__}.')
            if not name or name in (".", "..") or "/" in name or os.sep in name:
                raise ValueError(
                    f'Run(name={name!r}): use one folder name such as "digits" (no "/"), or None '
                    f"for the date and a counter; put the runs elsewhere with root=..."
                )
        if not isinstance(root, (str, os.PathLike)):
            raise TypeError(f'Run(root=...) expects a path such as "runs"; got {type(root).__name__}.')
        self.root = Path(root)
        self._name = name
        self._named = name is not None  # given by the user (adopt() names a run too, but not so)
        self._path: Path | None = None

    @property
    def path(self) -> Path:
        """The run's folder, created on first use."""
        if self._path is None:
            self._path = self._create()
        return self._path

    @property
    def named(self) -> bool:
        """Whether the run was given its name (else it is the date and a counter, new at every
        launch, or in a distributed fit the one rank 0 chose)."""
        return self._named

    @property
    def name(self) -> str:
        """The run's name (the folder is created first when the name is the default)."""
        return self._name if self._name is not None else self.path.name

    def _create(self) -> Path:
        if self._name is not None:
            path = self.root / self._name
            path.mkdir(parents=True, exist_ok=True)
            return path
        self.root.mkdir(parents=True, exist_ok=True)
        today = datetime.date.today().isoformat()
        taken = [int(m.group(2)) for n in os.listdir(self.root) if (m := _DATED.match(n)) and m.group(1) == today]
        counter = max(taken, default=0)
        while True:  # another process may take a name between listing and creating
            counter += 1
            path = self.root / f"{today}-{counter}"
            try:
                path.mkdir()
            except FileExistsError:
                continue
            return path

    def adopt(self, name: str) -> None:
        """Take ``name``, another process's choice, as this run's: in a distributed fit every rank
        uses the folder rank 0 chose.

        Raises:
            ValueError: this run has another folder already.
        """
        if self.name_if_chosen() not in (None, name):
            raise ValueError(
                f"Run: this process already uses the run folder {self.name_if_chosen()!r}, rank 0 uses "
                f"{name!r}. Name the run, RunFolder(\"digits\"), so that every process uses one folder."
            )
        self._name = name

    def name_if_chosen(self) -> str | None:
        """The run's name if it has one yet (given, or its folder created), else None."""
        if self._name is not None:
            return self._name
        return None if self._path is None else self._path.name

    def state_dict(self) -> dict[str, Any]:
        """``{"name": ...}``, kept in checkpoints to say which run they belong to."""
        return {"name": self.name}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """A checkpoint of another run resumes into this one; say so (the folder stays)."""
        saved = state.get("name")
        if saved != self.name:
            log.info("Resuming a checkpoint of run %r into run %r (%s).", saved, self.name, self.path)

    def __repr__(self) -> str:
        return f"Run({self._name!r}, root={str(self.root)!r})" if self._path is None else f"Run({str(self._path)!r})"
