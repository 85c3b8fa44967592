"""find_errors (``python -m cadence check``): every declaration error, also after a second
checkpoint saver or a run_after that names the saver."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cadence import READ, WRITE, Callback, Checkpointer, on
from cadence.events import BatchEnd, Event
from cadence.graph.check import find_errors
from cadence.phases import Phase


class Doubler(Callback):
    state_access = {"batch.loss": WRITE}

    @on(BatchEnd)
    def double(self, event: Event, phase: Phase, learner: Any) -> None: ...


class Reader(Callback):
    state_access = {"cbstate.nothing": READ}


class Upload(Callback):
    run_after = (Checkpointer,)


def first_lines(callbacks: list[Callback]) -> list[str]:
    return [f"{type(e).__name__}: {str(e).splitlines()[0]}" for e in find_errors(callbacks)]


def test_a_second_saver_is_set_aside_and_the_rest_still_checked(tmp_path: Path) -> None:
    found = first_lines([Doubler(), Doubler(), Reader(), Checkpointer(tmp_path / "a"), Checkpointer(tmp_path / "b")])
    assert [line.split(":")[0] for line in found] == ["DeclarationError", "MissingStateError", "ConflictError"]
    assert found[0].startswith(f"DeclarationError: A learner takes one Checkpointer; got Checkpointer#1('{tmp_path}/a'), Checkpointer#2('{tmp_path}/b').")
    assert found[1] == "MissingStateError: Reader reads cbstate.nothing, but no callback writes it."


def test_a_run_after_that_names_the_saver_is_set_aside_too(tmp_path: Path) -> None:
    found = first_lines([Upload(), Reader(), Checkpointer(tmp_path)])
    assert found == [
        "CycleError: Upload.run_after includes Checkpointer, which matches the Checkpointer, but Checkpointer.run_after "
        "includes Callback: it runs after every other callback, so that a checkpoint holds what they all did at that "
        "event; Upload cannot also run after it. Remove Checkpointer from Upload.run_after; to use a checkpoint it "
        "saved, handle a later event (the next BatchBegin, or FitEnd) and look in Checkpointer.folder.",
        "MissingStateError: Reader reads cbstate.nothing, but no callback writes it.",
    ]
