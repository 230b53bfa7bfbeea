"""The interface every upstream dialect implements, and the fate of each contract parameter.

A dialect turns the normalized contract request into the request one kind of upstream
expects, and that upstream's answers (whole or streamed) back into OpenAI's chat.completion
and chat.completion.chunk shapes. It knows nothing about sockets, retries or teams: each
method is a pure function of its input, so dialects are tested with golden files.

Every top-level contract parameter has a declared `Fate` in every dialect: passed as is,
translated, enforced by the gateway itself, or unsupported. An unsupported parameter is a
400 naming the parameter and the model, unless the model's config lists it in
`drop_params`; then it is dropped and the response says so in `x-gateway-dropped-params`.
Never a silent drop.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any, Protocol

from gateway.contract import ChatCompletionRequest
from gateway.errors import InvalidRequest


class Fate(enum.StrEnum):
    PASS = "pass"  # noqa: S105 (sent as the contract has it)
    TRANSLATE = "translate"  # sent in the upstream's own form (some values may be refused)
    UNSUPPORTED = "unsupported"  # 400, or dropped when the model's config allows it
    GATEWAY = "gateway"  # enforced by the gateway itself, not sent upstream


# Parameters the gateway enforces itself (policy and context stages) for upstreams that do
# not do it natively; those upstreams never receive them.
GATEWAY_ENFORCED = frozenset({"compliance", "safety_model", "context_length_exceeded_behavior"})

# The top-level parameters of a normalized request (OpenAI's aliases such as
# max_completion_tokens and top_logprobs are folded into these by the contract).
CONTRACT_PARAMETERS: tuple[str, ...] = tuple(
    name
    for name in ChatCompletionRequest.model_fields
    if name not in ("max_completion_tokens", "top_logprobs")
)


class StreamTranslator(Protocol):
    def feed(self, event: bytes) -> list[bytes]:
        """One upstream SSE event in, zero or more OpenAI SSE events out (each
        `data: ...\\n\\n`, the last one `data: [DONE]\\n\\n`). Raises a GatewayError for an
        error the upstream reported inside the stream."""
        ...


class UpstreamDialect(Protocol):
    name: str
    # Appended to the upstream's base_url.
    path: str

    @property
    def fates(self) -> Mapping[str, Fate]:
        """The fate of every contract parameter (CONTRACT_PARAMETERS)."""
        ...

    def headers(self, api_key: str | None) -> dict[str, str]:
        """Authentication and protocol headers for every call."""
        ...

    def build_body(
        self, request: ChatCompletionRequest, upstream_model: str, public_model: str
    ) -> dict[str, Any]:
        """The upstream's request body. Unsupported parameters were already refused or
        dropped; raises InvalidRequest for a value the upstream cannot honour."""
        ...

    def translate_response(self, body: dict[str, Any], public_model: str) -> dict[str, Any] | None:
        """A whole answer in OpenAI's chat.completion shape; None when it already is (the
        upstream's bytes are then relayed untouched)."""
        ...

    def stream_translator(self, include_usage: bool) -> StreamTranslator | None:
        """A translator for one stream; None when events are already OpenAI chunks."""
        ...


def bearer(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def contract_body(
    request: ChatCompletionRequest, upstream_model: str, exclude: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """The request in the contract's own JSON form, addressed to the upstream's model name,
    without the `exclude`d parameters."""
    body = request.model_dump(mode="json", by_alias=True, exclude_none=True, exclude=set(exclude))
    body["model"] = upstream_model
    return body


def unsupported(param: str, public_model: str, dialect: str) -> InvalidRequest:
    return InvalidRequest(
        f"Parameter '{param}' is not supported by model '{public_model}' "
        f"(its upstream speaks the {dialect} API).",
        param=param,
        code="unsupported_parameter",
    )


def refuse_or_drop(
    request: ChatCompletionRequest,
    unsupported_params: frozenset[str],
    droppable: frozenset[str],
    public_model: str,
    dialects: str,
) -> tuple[ChatCompletionRequest, list[str]]:
    """The request without the unsupported parameters the model may drop, and their names;
    raises for an unsupported parameter it may not drop."""
    dropped: list[str] = []
    for name in CONTRACT_PARAMETERS:
        if name not in unsupported_params or getattr(request, name) is None:
            continue
        if name not in droppable:
            raise unsupported(name, public_model, dialects)
        dropped.append(name)
    if dropped:
        request = request.model_copy(update=dict.fromkeys(dropped))
    return request, dropped
