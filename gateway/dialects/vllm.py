"""The `vllm` dialect: vLLM's OpenAI-compatible server, with its extra sampling parameters.

`top_k`, `min_p`, `repetition_penalty` and `echo` pass as they are; log probabilities and
JSON schemas take OpenAI's forms; a regex output becomes `structured_outputs.regex`; the
contract's `reasoning` switch becomes the chat template's `enable_thinking`. vLLM reports
some errors inside a 200 stream (`data: {"error": {..., "code": 400}}`); the relay turns
those into proper errors for every OpenAI-shaped dialect.
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
)
from gateway.dialects.openai import translate_openai_forms


class VLLMDialect:
    name = "vllm"
    path = "/chat/completions"
    fates = dict.fromkeys(CONTRACT_PARAMETERS, Fate.PASS) | {
        "logprobs": Fate.TRANSLATE,  # logprobs: true + top_logprobs
        "response_format": Fate.TRANSLATE,  # json_schema nested; regex to structured_outputs
        "reasoning": Fate.TRANSLATE,  # chat_template_kwargs.enable_thinking
        "context_length_exceeded_behavior": Fate.GATEWAY,  # the gateway truncates or errors
        "safety_model": Fate.GATEWAY,  # the gateway asks the safety model itself
        "compliance": Fate.GATEWAY,  # the gateway routes to eligible upstreams
    }

    def headers(self, api_key: str | None) -> dict[str, str]:
        return bearer(api_key)

    def build_body(
        self, request: ChatCompletionRequest, upstream_model: str, public_model: str
    ) -> dict[str, Any]:
        body = translate_openai_forms(contract_body(request, upstream_model, GATEWAY_ENFORCED))
        response_format = body.get("response_format")
        if response_format is not None and response_format["type"] == "regex":
            del body["response_format"]
            body["structured_outputs"] = {"regex": response_format["pattern"]}
        reasoning = body.pop("reasoning", None)
        if reasoning is not None:
            body["chat_template_kwargs"] = {"enable_thinking": reasoning["enabled"]}
        return body

    def translate_response(self, body: dict[str, Any], public_model: str) -> dict[str, Any] | None:
        return None

    def stream_translator(self, include_usage: bool) -> StreamTranslator | None:
        return None
