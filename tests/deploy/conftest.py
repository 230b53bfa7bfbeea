"""The installed wheel, shared by the tests of the installed package and of the image's
command (built once per session)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.installed import install


@pytest.fixture(scope="session")
def installed() -> Iterator[Path]:
    """The bin/ of a fresh venv outside the checkout with the wheel installed. Not under
    pytest's tmp_path (a root-only directory): the image's command runs it as the image's
    unprivileged user."""
    work = Path(tempfile.mkdtemp(prefix="llm-gateway-installed-"))
    work.chmod(0o755)
    try:
        yield install(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
