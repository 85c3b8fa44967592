"""The docs run: every ```python block in README.md and docs/ is executed, in order, one namespace per page.

A ```python block directly followed by a ```text block must print that text (doctest's
ELLIPSIS applies: ``...`` matches anything). Blocks fenced as ```python skip are not run.
"""

from __future__ import annotations

import contextlib
import doctest
import io
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
FENCE = re.compile(r"^```(\w+)?([^\n]*)\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)


def blocks(page: Path) -> list[tuple[str, str, str]]:
    return [(m.group(1) or "", m.group(2).strip(), m.group(3)) for m in FENCE.finditer(page.read_text())]


PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def test_there_are_pages_with_code() -> None:
    assert any(lang == "python" for page in PAGES for lang, _, _ in blocks(page))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_page_runs(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem.replace('-', '_')}"}
    found = blocks(page)
    checker = doctest.OutputChecker()
    for index, (lang, flags, code) in enumerate(found):
        if lang != "python" or flags == "skip":
            continue
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, f"{page.name}[block {index}]", "exec"), namespace)
        following = found[index + 1] if index + 1 < len(found) else None
        if following is not None and following[0] == "text":
            expected = following[2]
            got = out.getvalue()
            assert checker.check_output(expected, got, doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE), (
                f"{page.name} block {index} printed:\n{got}\nbut the page shows:\n{expected}"
            )
