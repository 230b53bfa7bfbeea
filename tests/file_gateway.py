"""A gateway in this process served from a configuration file, as `serve` runs one, so
that it can reload: the test rewrites the file, then calls the reload hook."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.app import build_app
from gateway.config import read_config_file
from gateway.reload import ReloadResult, reload
from tests.conftest import UPSTREAM_KEY, UPSTREAM_KEY_ENV, RunningGateway


@dataclass
class FileGateway(RunningGateway):
    path: Path

    @property
    def app(self) -> web.Application:
        return self.server.app

    async def reload_with(self, raw: dict[str, Any]) -> ReloadResult:
        self.path.write_text(yaml.safe_dump(raw))
        return await reload(self.app)


@asynccontextmanager
async def file_gateway(
    raw: dict[str, Any], directory: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[FileGateway]:
    # A reload reads the upstream key's variable from the environment, as serve's does.
    monkeypatch.setenv(UPSTREAM_KEY_ENV, UPSTREAM_KEY)
    path = directory / "gateway.yaml"
    path.write_text(yaml.safe_dump(raw))
    source = read_config_file(path)
    log = io.StringIO()
    server = TestServer(build_app(source, log_stream=log))
    await server.start_server()
    try:
        yield FileGateway(server, log, source.config, path)
    finally:
        await server.close()
