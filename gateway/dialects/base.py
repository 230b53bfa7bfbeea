"""The interface every upstream dialect implements.

A dialect turns the normalized contract request into the JSON body one kind of upstream
expects. It knows nothing about HTTP, retries or teams; it is a pure function of the
request and the model's name at the upstream, so it is tested with golden files.
"""

from __future__ import annotations

from typing import Any, Protocol

from gateway.contract import ChatCompletionRequest
from gateway.errors import InvalidRequest


class UpstreamDialect(Protocol):
    name: str

    def build_body(
        self, request: ChatCompletionRequest, upstream_model: str, public_model: str
    ) -> dict[str, Any]:
        """The upstream's request body; raises InvalidRequest for what it cannot honour."""
        ...


def contract_body(request: ChatCompletionRequest, upstream_model: str) -> dict[str, Any]:
    """The request in the contract's own JSON form, addressed to the upstream's model name."""
    body = request.model_dump(mode="json", by_alias=True, exclude_none=True)
    body["model"] = upstream_model
    return body


def unsupported(param: str, public_model: str, dialect: str) -> InvalidRequest:
    return InvalidRequest(
        f"Parameter '{param}' is not supported by model '{public_model}' "
        f"(its upstream speaks the {dialect} API).",
        param=param,
        code="unsupported_parameter",
    )
