"""The `openai` dialect: OpenAI's Chat Completions API and servers that copy it exactly.

Translates the contract's forms back to OpenAI's (`logprobs` k to `logprobs: true` +
`top_logprobs: k`, `max_tokens` to `max_completion_tokens`, the top-level JSON schema to
`json_schema: {name, description, schema, strict}`) and refuses what OpenAI cannot honour
instead of dropping it: a dropped `top_k` or regex silently changes the answer.
"""

from __future__ import annotations

from typing import Any

from gateway.contract import ChatCompletionRequest
from gateway.dialects.base import (
    CONTRACT_PARAMETERS,
    GATEWAY_ENFORCED,
    Fate,
    StreamTranslator,
    bearer,
    contract_body,
    unsupported,
)


def openai_json_schema(response_format: dict[str, Any]) -> dict[str, Any]:
    """The contract's json_schema response_format in OpenAI's nested form."""
    json_schema: dict[str, Any] = {
        "name": response_format.get("name") or "response",
    }
    if "description" in response_format:
        json_schema["description"] = response_format["description"]
    json_schema["schema"] = response_format["schema"]
    if "strict" in response_format:
        json_schema["strict"] = response_format["strict"]
    return {"type": "json_schema", "json_schema": json_schema}


class OpenAIDialect:
    name = "openai"
    path = "/chat/completions"
    fates = dict.fromkeys(CONTRACT_PARAMETERS, Fate.PASS) | {
        "max_tokens": Fate.TRANSLATE,  # max_completion_tokens
        "logprobs": Fate.TRANSLATE,  # logprobs: true + top_logprobs
        "response_format": Fate.TRANSLATE,  # json_schema nested; regex refused
        "context_length_exceeded_behavior": Fate.GATEWAY,  # the gateway truncates or errors
        "top_k": Fate.UNSUPPORTED,
        "min_p": Fate.UNSUPPORTED,
        "repetition_penalty": Fate.UNSUPPORTED,
        "echo": Fate.UNSUPPORTED,
        "safety_model": Fate.GATEWAY,  # the gateway asks the safety model itself
        "compliance": Fate.GATEWAY,  # the gateway routes to eligible upstreams
        "reasoning": Fate.UNSUPPORTED,
    }

    def headers(self, api_key: str | None) -> dict[str, str]:
        return bearer(api_key)

    def build_body(
        self, request: ChatCompletionRequest, upstream_model: str, public_model: str
    ) -> dict[str, Any]:
        body = translate_openai_forms(contract_body(request, upstream_model, GATEWAY_ENFORCED))
        if "max_tokens" in body:
            body["max_completion_tokens"] = body.pop("max_tokens")
        response_format = body.get("response_format")
        if response_format is not None and response_format["type"] == "regex":
            raise unsupported("response_format.pattern", public_model, self.name)
        return body

    def translate_response(self, body: dict[str, Any], public_model: str) -> dict[str, Any] | None:
        return None

    def stream_translator(self, include_usage: bool) -> StreamTranslator | None:
        return None


def translate_openai_forms(body: dict[str, Any]) -> dict[str, Any]:
    """What OpenAI and the servers that copy it share: logprobs as a flag plus a count, and
    the nested JSON schema."""
    if "logprobs" in body:
        body["top_logprobs"] = body["logprobs"]
        body["logprobs"] = True
    response_format = body.get("response_format")
    if response_format is not None and response_format["type"] == "json_schema":
        body["response_format"] = openai_json_schema(response_format)
    return body
