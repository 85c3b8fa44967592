"""Fixtures shared by the tests; small doubles live in helpers.py."""

from __future__ import annotations

import pytest
import torch
from helpers import Entry


@pytest.fixture
def log() -> list[Entry]:
    """A shared event log for RecordingCallback and friends."""
    return []


@pytest.fixture(autouse=True)
def _seeded() -> None:
    """Every test starts from the same global RNG state."""
    torch.manual_seed(0)
