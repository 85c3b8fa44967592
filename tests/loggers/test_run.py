"""Run: a process that has chosen its run folder refuses another process's choice."""

from __future__ import annotations

from pathlib import Path

import pytest

from cadence.loggers import Run


def test_a_run_adopts_rank_zeros_folder_until_it_has_one_of_its_own(tmp_path: Path) -> None:
    unchosen = Run(root=tmp_path)
    unchosen.adopt("from-rank-0")  # nothing chosen yet: rank 0's name is this run's
    assert unchosen.name == "from-rank-0" and unchosen.path == tmp_path / "from-rank-0"
    unchosen.adopt("from-rank-0")  # the same name again is no change

    dated = Run(root=tmp_path)
    created = dated.path.name  # the date and a counter, created by this process
    with pytest.raises(
        ValueError,
        match=rf"^Run: this process already uses the run folder '{created}', rank 0 uses 'other'\. "
        r'Name the run, RunFolder\("digits"\), so that every process uses one folder\.$',
    ):
        dated.adopt("other")
    assert dated.name == created

    with pytest.raises(ValueError, match=r"already uses the run folder 'digits', rank 0 uses 'other'"):
        Run("digits", root=tmp_path).adopt("other")
