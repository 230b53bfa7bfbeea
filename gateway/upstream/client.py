"""Calls to upstreams: one shared `aiohttp.ClientSession`, per-upstream timeouts and
pre-built headers, and the mapping of every transport failure and upstream error status
to the gateway's own errors.

An upstream's refusal of the gateway's credentials (401/403) is the operator's problem,
not the client's: it becomes a 503 that says so, never a 401 blaming the client's key.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDict
from pydantic_core import from_json

from gateway.config import GatewayConfig
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    ModelNotFound,
    RateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)

# Upstream error bodies are read only this far: enough for any real error message.
_MAX_ERROR_BODY = 64 * 1024
_MAX_UPSTREAM_MESSAGE = 1000


@dataclass(frozen=True, slots=True)
class UpstreamEndpoint:
    url: str
    headers: CIMultiDict[str]
    timeout: aiohttp.ClientTimeout


class UpstreamClient:
    def __init__(self, config: GatewayConfig, session: aiohttp.ClientSession) -> None:
        self._session = session
        self._endpoints: dict[str, UpstreamEndpoint] = {}
        for name, upstream in config.upstreams.items():
            headers = CIMultiDict({"Content-Type": "application/json"})
            if upstream.api_key_env is not None:
                headers["Authorization"] = f"Bearer {upstream.api_key_env.value}"
            self._endpoints[name] = UpstreamEndpoint(
                url=upstream.chat_url,
                headers=headers,
                timeout=aiohttp.ClientTimeout(
                    total=upstream.timeouts.total,
                    connect=upstream.timeouts.connect,
                    sock_read=upstream.timeouts.read,
                ),
            )

    @property
    def ready(self) -> bool:
        return not self._session.closed

    @asynccontextmanager
    async def post_chat(
        self, upstream_name: str, body: bytes, request_id: str
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """POST a chat request; yields a 2xx response whose body is still unread.

        The response is closed (not returned to the pool) if the caller stops early, so
        an abandoned stream also stops the upstream's generation.
        """
        endpoint = self._endpoints[upstream_name]
        headers = endpoint.headers.copy()
        headers["x-request-id"] = request_id
        try:
            response = await self._session.post(
                endpoint.url, data=body, headers=headers, timeout=endpoint.timeout
            )
        except aiohttp.ConnectionTimeoutError:
            raise UpstreamUnavailable("The upstream could not be reached in time.") from None
        except TimeoutError:
            raise UpstreamTimeout("The upstream did not answer in time.") from None
        except aiohttp.ClientError:
            raise UpstreamUnavailable("The upstream could not be reached.") from None
        try:
            if response.status >= 300:
                raise await _error_from(response)
            yield response
        except BaseException:
            response.close()
            raise
        finally:
            response.release()


async def _error_from(response: aiohttp.ClientResponse) -> GatewayError:
    status = response.status
    if status in (401, 403):
        return UpstreamUnavailable(
            "The upstream refused the gateway's own credentials; "
            "the gateway operator must fix the upstream API key.",
            code="upstream_auth_failed",
        )
    if status == 429:
        retry_after = response.headers.get("Retry-After")
        return RateLimited(
            "The upstream is rate limiting this model; retry later.",
            code="upstream_rate_limited",
            headers={"Retry-After": retry_after} if retry_after else None,
        )
    if status == 504:
        return UpstreamTimeout("The upstream timed out.")
    if status in (400, 404, 422):
        message, param, code = await _upstream_error_fields(response)
        error_class = ModelNotFound if status == 404 else InvalidRequest
        return error_class(
            message or f"The upstream rejected the request (HTTP {status}).",
            param=param,
            code=code,
        )
    return UpstreamUnavailable(f"The upstream failed (HTTP {status}).")


async def _upstream_error_fields(
    response: aiohttp.ClientResponse,
) -> tuple[str | None, str | None, str | None]:
    """message, param and code of an OpenAI-shaped upstream error, when it has one."""
    try:
        raw = await response.content.read(_MAX_ERROR_BODY)
        parsed = from_json(raw)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None, None, None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, str):
        return error[:_MAX_UPSTREAM_MESSAGE], None, None
    if not isinstance(error, dict):
        return None, None, None

    def text(key: str) -> str | None:
        value = error.get(key)
        return str(value)[:_MAX_UPSTREAM_MESSAGE] if value is not None else None

    return text("message"), text("param"), text("code")
