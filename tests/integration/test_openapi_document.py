"""`GET /openapi.json` serves, without a key, an OpenAPI 3.1 document of the gateway's
endpoints whose request schema is the contract model's own JSON schema (so it cannot drift
from validation), with a bearer security scheme that the probes and the document itself do
not require, and the contract's status codes as OpenAI-shaped errors."""

from __future__ import annotations

from typing import Any

import aiohttp

from gateway.contract import ChatCompletionRequest
from gateway.openapi import openapi_document
from tests.conftest import RunningGateway

REF = "#/components/schemas/{model}"


async def fetch(gateway: RunningGateway) -> tuple[int, str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{gateway.url}/openapi.json") as resp,
    ):
        return resp.status, resp.content_type, await resp.json()


async def test_the_document_is_served_without_a_key_and_describes_every_endpoint(
    gateway: RunningGateway,
) -> None:
    status, content_type, document = await fetch(gateway)

    assert (status, content_type) == (200, "application/json")
    assert document["openapi"] == "3.1.0"
    assert document == openapi_document()
    assert set(document["paths"]) == {
        "/v1/chat/completions",
        "/v1/models",
        "/v1/models/{model}",
        "/healthz",
        "/readyz",
        "/openapi.json",
    }
    assert document["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "A team key: `Authorization: Bearer <key>`.",
    }
    assert document["security"] == [{"bearer": []}]
    for path in ("/healthz", "/readyz", "/openapi.json"):
        assert document["paths"][path]["get"]["security"] == []


async def test_the_request_schema_is_the_contract_models_own(gateway: RunningGateway) -> None:
    _, _, document = await fetch(gateway)
    chat = document["paths"]["/v1/chat/completions"]["post"]
    schemas = document["components"]["schemas"]
    generated = ChatCompletionRequest.model_json_schema(ref_template=REF)

    body = chat["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": REF.format(model="ChatCompletionRequest")}
    assert schemas["ChatCompletionRequest"] == {
        key: value for key, value in generated.items() if key != "$defs"
    }
    for name, schema in generated["$defs"].items():
        assert schemas[name] == schema
    assert ChatCompletionRequest.model_validate(body["example"])


async def test_the_contracts_statuses_are_documented_as_openai_errors(
    gateway: RunningGateway,
) -> None:
    _, _, document = await fetch(gateway)
    responses = document["paths"]["/v1/chat/completions"]["post"]["responses"]
    error = {"$ref": REF.format(model="ErrorResponse")}

    assert set(responses) == {"200", "400", "401", "404", "413", "429", "503", "504"}
    assert set(responses["200"]["content"]) == {"application/json", "text/event-stream"}
    for status, response in responses.items():
        if status != "200":
            assert response["content"]["application/json"]["schema"] == error, status
    assert "Retry-After" in responses["429"]["headers"]
    assert document["components"]["schemas"]["ErrorDetail"]["required"] == [
        "message",
        "type",
        "param",
        "code",
    ]
