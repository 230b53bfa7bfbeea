"""The `together` dialect: the contract is Together's own API, so the body passes as is."""

from __future__ import annotations

from typing import Any

from gateway.contract import ChatCompletionRequest
from gateway.dialects.base import contract_body


class TogetherDialect:
    name = "together"

    def build_body(
        self, request: ChatCompletionRequest, upstream_model: str, public_model: str
    ) -> dict[str, Any]:
        body = contract_body(request, upstream_model)
        response_format = body.get("response_format")
        if response_format is not None and response_format["type"] == "json_schema":
            # Together takes the schema at the top; an OpenAI-style name is only a label.
            body["response_format"] = {"type": "json_schema", "schema": response_format["schema"]}
        return body
