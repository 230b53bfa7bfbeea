"""Row 15 (and everything else a schema-driven client can send): schemathesis generates
requests from the gateway's own OpenAPI document (the one `GET /openapi.json` serves):
valid and invalid bodies, parameters, headers and methods, boundary values first (its
coverage phase), then random ones; and sends them to a live gateway (served from a thread,
with the fake upstream behind it). Every answer is as documented: never a 5xx
(`not_a_server_error`), every 4xx in OpenAI's error shape and nothing else (the custom
`openai_error_shape`), and statuses, content types, headers and bodies (SSE events
included) as the document says (schemathesis's conformance checks).

Bounded for the suite: SCHEMATHESIS_EXAMPLES random examples per operation (25; about a
thousand requests in all, mostly the coverage phase's); the README says how to run a
longer one."""

from __future__ import annotations

import asyncio
import io
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.app import build_app
from gateway.openapi import openapi_document
from gateway.testing.fake_upstream import FakeUpstream
from tests.conftest import UPSTREAM_KEY, auth, config_dict, make_config

EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "25"))

schema = schemathesis.openapi.from_dict(openapi_document())


@schemathesis.check
def openai_error_shape(
    ctx: Any, response: schemathesis.Response, case: schemathesis.Case[Any]
) -> None:
    """A 4xx body is exactly OpenAI's error object."""
    if 400 <= response.status_code < 500:
        body = response.json()
        assert isinstance(body, dict) and set(body) == {"error"}, body
        error = body["error"]
        assert set(error) == {"message", "type", "param", "code"}, error
        assert isinstance(error["message"], str) and error["message"]
        assert isinstance(error["type"], str)
        assert error["param"] is None or isinstance(error["param"], str)
        assert error["code"] is None or isinstance(error["code"], str)


@pytest.fixture(scope="module")
def live_gateway() -> Iterator[str]:
    """A gateway and its fake upstream on their own event loop, in a thread: schemathesis
    calls them synchronously from the test's thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="live-gateway", daemon=True)
    thread.start()
    servers: list[TestServer] = []

    async def start() -> str:
        upstream = TestServer(FakeUpstream(api_key=UPSTREAM_KEY).app())
        await upstream.start_server()
        servers.append(upstream)
        raw = config_dict(str(upstream.make_url("")).rstrip("/"))
        # Part of what schemathesis sends has no key; blocking the test's own address after
        # 20 of them would turn every later answer into the same 429.
        raw["auth_failures"] = {"enabled": False}
        config = make_config(raw)
        gateway = TestServer(build_app(config, log_stream=io.StringIO()))
        await gateway.start_server()
        servers.append(gateway)
        return str(gateway.make_url("")).rstrip("/")

    async def stop() -> None:
        for server in reversed(servers):
            await server.close()

    try:
        yield asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=30)
    finally:
        asyncio.run_coroutine_threadsafe(stop(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()


@schema.parametrize()
@settings(
    max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)
def test_row_15_generated_requests_get_no_5xx_and_only_documented_openai_shaped_answers(
    case: schemathesis.Case[Any], live_gateway: str
) -> None:
    case.call_and_validate(
        base_url=live_gateway,
        headers=auth(),
        checks=[
            not_a_server_error,
            openai_error_shape,
            status_code_conformance,
            content_type_conformance,
            response_headers_conformance,
            response_schema_conformance,
        ],
    )
