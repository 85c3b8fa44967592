"""One group of two ranks, started once for the whole session, runs every multi-process
scenario (``scenarios.run_all``); the tests then compare its results with the same runs in
this process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cadence.distributed import launch
from distributed import scenarios


@pytest.fixture(scope="session")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    """The folder the group wrote to, and each rank's results (``scenarios.run_all``)."""
    folder = tmp_path_factory.mktemp("two-ranks")
    return folder, launch(scenarios.run_all, str(folder), nprocs=2, timeout=240)
