"""Every relative link in README.md and docs/ points at a file inside the repository, and the
request contract the README links to is shipped in docs/."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# [text](target) with a target that is neither a URL nor an in-page anchor.
LINK = re.compile(r"\]\((?!https?://|#|mailto:)([^)\s#]+)")


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_relative_links_resolve_inside_the_repository(document: Path) -> None:
    for target in LINK.findall(document.read_text()):
        resolved = (document.parent / target).resolve()
        assert resolved.is_relative_to(ROOT), f"{document.name}: {target} leaves the repository"
        assert resolved.exists(), f"{document.name}: {target} does not exist"


def test_readme_links_the_shipped_contract() -> None:
    assert "](docs/chat-completions-api.md)" in (ROOT / "README.md").read_text()
