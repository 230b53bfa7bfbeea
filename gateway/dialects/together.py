"""The `together` dialect: the contract is Together's own API, so the body passes as is,
except a JSON schema's OpenAI-style extras: `name` is only a label and is left out, a
`description` has no place in Together's form and is refused."""

from __future__ import annotations

from typing import Any

from gateway.contract import ChatCompletionRequest
from gateway.dialects.base import (
    CONTRACT_PARAMETERS,
    Fate,
    StreamTranslator,
    bearer,
    contract_body,
    unsupported,
)


class TogetherDialect:
    name = "together"
    path = "/chat/completions"
    fates = dict.fromkeys(CONTRACT_PARAMETERS, Fate.PASS) | {
        # Together takes the schema at the top; an OpenAI-style name is only a label, a
        # description is refused.
        "response_format": Fate.TRANSLATE,
    }

    def headers(self, api_key: str | None) -> dict[str, str]:
        return bearer(api_key)

    def build_body(
        self, request: ChatCompletionRequest, upstream_model: str, public_model: str
    ) -> dict[str, Any]:
        body = contract_body(request, upstream_model)
        response_format = body.get("response_format")
        if response_format is not None and response_format["type"] == "json_schema":
            if "description" in response_format:
                # Together's form has no place for it, and it changes what the model writes.
                raise unsupported("response_format.description", public_model, self.name)
            body["response_format"] = {"type": "json_schema", "schema": response_format["schema"]}
        return body

    def translate_response(self, body: dict[str, Any], public_model: str) -> dict[str, Any] | None:
        return None

    def stream_translator(self, include_usage: bool) -> StreamTranslator | None:
        return None
