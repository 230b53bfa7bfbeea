"""The `openai` dialect: OpenAI's Chat Completions API and servers that copy it exactly.

Translates the contract's forms back to OpenAI's (`logprobs` k to `logprobs: true` +
`top_logprobs: k`, `max_tokens` to `max_completion_tokens`, the top-level JSON schema to
`json_schema: {name, schema, strict}`) and refuses what OpenAI cannot honour instead of
dropping it: a dropped `top_k` or regex silently changes the answer.
"""

from __future__ import annotations

from typing import Any

from gateway.contract import ChatCompletionRequest
from gateway.dialects.base import contract_body, unsupported

# Contract parameters OpenAI has no equivalent for.
_UNSUPPORTED = (
    "top_k",
    "min_p",
    "repetition_penalty",
    "echo",
    "safety_model",
    "compliance",
    "reasoning",
)


class OpenAIDialect:
    name = "openai"

    def build_body(
        self, request: ChatCompletionRequest, upstream_model: str, public_model: str
    ) -> dict[str, Any]:
        body = contract_body(request, upstream_model)
        for param in _UNSUPPORTED:
            if param in body:
                raise unsupported(param, public_model, self.name)

        behaviour = body.pop("context_length_exceeded_behavior", "error")
        if behaviour != "error":  # OpenAI always errors on an overlong prompt
            raise unsupported("context_length_exceeded_behavior", public_model, self.name)

        if "max_tokens" in body:
            body["max_completion_tokens"] = body.pop("max_tokens")

        if "logprobs" in body:
            body["top_logprobs"] = body["logprobs"]
            body["logprobs"] = True

        response_format = body.get("response_format")
        if response_format is not None:
            if response_format["type"] == "regex":
                raise unsupported("response_format.pattern", public_model, self.name)
            if response_format["type"] == "json_schema":
                json_schema: dict[str, Any] = {
                    "name": response_format.get("name") or "response",
                    "schema": response_format["schema"],
                }
                if "strict" in response_format:
                    json_schema["strict"] = response_format["strict"]
                body["response_format"] = {"type": "json_schema", "json_schema": json_schema}
        return body
