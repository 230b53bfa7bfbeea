"""The gateway's error vocabulary: every failure a client can see, as an exception that
already knows its HTTP status and its OpenAI-shaped body.

Messages never contain the value a client submitted (it may be a key or patient data),
only the name of the parameter and what was expected.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic_core import to_json


def field_path(loc: Iterable[int | str]) -> str:
    """A pydantic error location as the one path form every message of the gateway uses,
    the client's and the operator's alike: `messages[2].content`, `teams.search.models[1]`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


class GatewayError(Exception):
    """Base of every error answered to a client; `status` and `error_type` are per class."""

    status: int = 500
    error_type: str = "internal_error"
    default_code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers = headers or {}
        # The message quotes the upstream, whose text may echo the request's content.
        self.upstream_text = False
        # The upstream's own status, for an error that reports one (see from_upstream): it,
        # not the status the client is answered with, decides whether to try elsewhere.
        self.upstream_status: int | None = None

    def withheld(self) -> GatewayError:
        """This error with the upstream's own words replaced (for HIPAA requests, whose
        content must not appear in error bodies)."""
        if not self.upstream_text:
            return self
        error = type(self)(
            f"The upstream refused the request (HTTP {self.status}); its message is withheld "
            "for requests under HIPAA.",
            code=self.code,
            headers=self.headers,
        )
        return error

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }

    def body_bytes(self) -> bytes:
        return to_json(self.body())


class InvalidRequest(GatewayError):
    status = 400
    error_type = "invalid_request_error"


class AuthenticationFailed(GatewayError):
    status = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"


class ModelNotFound(GatewayError):
    status = 404
    error_type = "invalid_request_error"
    default_code = "model_not_found"


class NotFound(GatewayError):
    status = 404
    error_type = "invalid_request_error"
    default_code = "not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    error_type = "invalid_request_error"
    default_code = "method_not_allowed"


class PayloadTooLarge(GatewayError):
    status = 413
    error_type = "invalid_request_error"
    default_code = "request_too_large"


class RequestTimeout(GatewayError):
    status = 408
    error_type = "invalid_request_error"
    default_code = "request_timeout"


class RequestLineTooLong(GatewayError):
    status = 414
    error_type = "invalid_request_error"
    default_code = "request_line_too_long"


class UnsupportedContentEncoding(GatewayError):
    status = 415
    error_type = "invalid_request_error"
    default_code = "unsupported_content_encoding"


class HeadersTooLarge(GatewayError):
    status = 431
    error_type = "invalid_request_error"
    default_code = "request_headers_too_large"


class RateLimited(GatewayError):
    status = 429
    error_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


class UpstreamUnavailable(GatewayError):
    status = 503
    error_type = "service_unavailable_error"
    default_code = "upstream_unavailable"


class UpstreamBusy(GatewayError):
    """The gateway's own connections to the upstream are all in use: its backpressure,
    not the upstream's failure."""

    status = 503
    error_type = "service_unavailable_error"
    default_code = "upstream_busy"


class ModelOverloaded(GatewayError):
    """Every upstream that may serve the request is at its capacity and the request could
    not wait for one (its queue is full or the wait ran out): the model's capacity, not the
    team's limit."""

    status = 503
    error_type = "service_unavailable_error"
    default_code = "model_overloaded"


class AuditUnavailable(GatewayError):
    """The audit trail cannot be written and the request may not be served unaudited
    (`audit.on_failure: refuse`, or a request under HIPAA)."""

    status = 503
    error_type = "service_unavailable_error"
    default_code = "audit_unavailable"


class TooManyConnections(GatewayError):
    """The process holds as many client connections as it may (`server.max_connections`)."""

    status = 503
    error_type = "service_unavailable_error"
    default_code = "too_many_connections"


class UpstreamTimeout(GatewayError):
    status = 504
    error_type = "timeout_error"
    default_code = "upstream_timeout"


class ContentPolicyViolation(GatewayError):
    status = 400
    error_type = "invalid_request_error"
    default_code = "content_policy_violation"


class InternalError(GatewayError):
    """Only for the gateway's own bugs; never raised for anything a client sent."""

    status = 500
    error_type = "internal_error"
    default_code = "internal_error"


def from_upstream(
    status: int,
    message: str | None = None,
    *,
    param: str | None = None,
    code: str | None = None,
    retry_after: str | None = None,
) -> GatewayError:
    """The error a client gets for an upstream's error status, whether it came as the HTTP
    status or inside a stream (vLLM's integer `code`, Anthropic's error types).

    An upstream's refusal of the gateway's own credentials (401/403) is the operator's
    problem, not the client's: a 503 that says so, never a 401 blaming the client's key."""
    error = _for_upstream_status(status, message, param, code, retry_after)
    error.upstream_status = status
    return error


def _for_upstream_status(
    status: int, message: str | None, param: str | None, code: str | None, retry_after: str | None
) -> GatewayError:
    if status in (401, 403):
        return UpstreamUnavailable(
            "The upstream refused the gateway's own credentials; "
            "the gateway operator must fix the upstream API key.",
            code="upstream_auth_failed",
        )
    if status == 429:
        return RateLimited(
            "The upstream is rate limiting this model; retry later.",
            code="upstream_rate_limited",
            headers={"Retry-After": retry_after} if retry_after else None,
        )
    if status == 504:
        return UpstreamTimeout("The upstream timed out.")
    if status == 529:  # Anthropic's overloaded_error; the contract has no 529
        return UpstreamUnavailable("The upstream is overloaded (HTTP 529).")
    if status == 413:
        too_large = PayloadTooLarge(message or "The upstream found the request too large.")
        too_large.upstream_text = message is not None
        return too_large
    if status in (400, 404, 422):
        error_class = ModelNotFound if status == 404 else InvalidRequest
        error: GatewayError = error_class(
            message or f"The upstream rejected the request (HTTP {status}).",
            param=param,
            code=code,
        )
        error.upstream_text = message is not None
        return error
    return UpstreamUnavailable(f"The upstream failed (HTTP {status}).")
