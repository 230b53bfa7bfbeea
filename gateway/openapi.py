"""The machine-readable API: an OpenAPI 3.1 document of the gateway's endpoints, served at
`GET /openapi.json` without authentication.

The request body's schema is `ChatCompletionRequest`'s own JSON schema, so the document
cannot drift from what validation accepts. Answers are described by the small models
below: the error body exactly (the shape `errors.GatewayError.body` produces, checked by a
test), the relayed upstream answers loosely (upstreams add fields of their own). The
document depends on no configuration: it is built once per process, when the first app is
built (generating the schemas takes tens of milliseconds), and served as the same
immutable bytes every time.
"""

from __future__ import annotations

import functools
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Literal

from aiohttp import web
from aiohttp.typedefs import Handler
from pydantic import BaseModel, ConfigDict
from pydantic.json_schema import models_json_schema
from pydantic_core import to_json

from gateway.contract import ChatCompletionRequest

_REF = "#/components/schemas/{model}"
_OPEN = ConfigDict(extra="allow")
_EXACT = ConfigDict(extra="forbid")


# ---------------------------------------------------------------- answers


class ErrorDetail(BaseModel):
    model_config = _EXACT

    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """OpenAI's error shape; `message` never quotes what the client sent."""

    model_config = _EXACT

    error: ErrorDetail


class Usage(BaseModel):
    model_config = _OPEN

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChoiceMessage(BaseModel):
    model_config = _OPEN

    role: Literal["assistant"]
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class Choice(BaseModel):
    model_config = _OPEN

    index: int
    message: ChoiceMessage
    finish_reason: str | None = None


class ChatCompletion(BaseModel):
    """The upstream's answer, relayed (in the contract's shape whatever its dialect)."""

    model_config = _OPEN

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[Choice]
    usage: Usage | None = None


class ModelObject(BaseModel):
    model_config = _OPEN

    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    model_config = _OPEN

    object: Literal["list"]
    data: list[ModelObject]


class Health(BaseModel):
    model_config = _OPEN

    status: Literal["ok"]


class Readiness(BaseModel):
    model_config = _OPEN

    status: Literal["ready", "starting"]
    config_loaded: bool
    rate_limiter: Literal["memory", "redis", "redis-unavailable"]
    upstreams: dict[str, Any]


# ---------------------------------------------------------------- the document

EXAMPLE_REQUEST = {
    "model": "meta-llama/Llama-3.1-8B-Instruct",
    "messages": [{"role": "user", "content": "Hello, gateway"}],
}
_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds until a retry can succeed.",
        "schema": {"type": "integer", "minimum": 1},
    }
}
# One Server-Sent Event (OpenAPI 3.1 has `schema` describe each event of a stream).
_SSE_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "data": {
            "type": "string",
            "description": "A chat.completion.chunk as JSON, then `[DONE]`; or an "
            '`{"error": {...}}` object ending a stream cut short.',
        },
        "event": {"type": "string"},
        "id": {"type": "string"},
    },
}
# The contract's statuses (docs/chat-completions-api.md), plus 413 for an oversized body.
_CHAT_ERRORS = {
    "400": "Invalid JSON, content type or parameter (`param` names it); a policy, safety or "
    "context-length refusal.",
    "401": "Missing, malformed or unknown API key (`invalid_api_key`).",
    "404": "The model does not exist or the team may not use it (`model_not_found`).",
    "413": "The request body is larger than the gateway accepts (`request_too_large`).",
    "429": "Over a rate limit (`rate_limit_exceeded`), the upstream's (`upstream_rate_limited`) "
    "or too many failed authentications from this address (`too_many_auth_failures`).",
    "503": "No upstream could answer, the rate limiter or safety model is unavailable, or "
    "the audit trail cannot be written (`audit_unavailable`).",
    "504": "The upstream did not answer in time (`upstream_timeout`).",
}
# What every API request may get, whatever its endpoint.
_AUTH_ERRORS = {
    **{key: _CHAT_ERRORS[key] for key in ("401", "429")},
    "503": "The audit trail cannot be written (`audit_unavailable`).",
}


def openapi_document() -> dict[str, Any]:
    _, schemas = models_json_schema(
        [
            (model, "validation")
            for model in (
                ChatCompletionRequest,
                ChatCompletion,
                ErrorResponse,
                ModelObject,
                ModelList,
                Health,
                Readiness,
            )
        ],
        ref_template=_REF,
    )
    model_path = {
        "name": "model",
        "in": "path",
        "required": True,
        "description": "A model's public name or alias; it may contain '/'.",
        "schema": {"type": "string", "minLength": 1},
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "llm-gateway",
            "version": _version(),
            "description": "One OpenAI-compatible endpoint in front of every LLM backend. "
            "Errors always have OpenAI's shape and never quote what the client sent.",
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/chat/completions": {
                "post": {
                    "operationId": "createChatCompletion",
                    "summary": "A chat completion, whole or streamed (`stream: true`).",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": _ref("ChatCompletionRequest"),
                                "example": EXAMPLE_REQUEST,
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "The answer: a chat.completion, or with `stream: "
                            "true` Server-Sent Events, each `data:` a chat.completion.chunk, "
                            "ending with `data: [DONE]` (a stream cut short ends with a "
                            "`data:` error event instead).",
                            "content": {
                                "application/json": {"schema": _ref("ChatCompletion")},
                                "text/event-stream": {"schema": _SSE_EVENT},
                            },
                        },
                        **_errors(_CHAT_ERRORS),
                    },
                }
            },
            "/v1/models": {
                "get": {
                    "operationId": "listModels",
                    "summary": "The models this team may use.",
                    "responses": {
                        "200": _json("The team's models.", "ModelList"),
                        **_errors(_AUTH_ERRORS),
                    },
                }
            },
            "/v1/models/{model}": {
                "get": {
                    "operationId": "retrieveModel",
                    "summary": "One model this team may use.",
                    "parameters": [model_path],
                    "responses": {
                        "200": _json("The model.", "ModelObject"),
                        **_errors({**_AUTH_ERRORS, "404": _CHAT_ERRORS["404"]}),
                    },
                }
            },
            "/healthz": _probe("Liveness: 200 while the process runs.", "Health", ("200",)),
            "/readyz": _probe(
                "Readiness: 200 once the configuration is loaded and the upstream session "
                "is open, else 503.",
                "Readiness",
                ("200", "503"),
            ),
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document.",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3.1.",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
        },
        "components": {
            "schemas": schemas["$defs"],
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A team key: `Authorization: Bearer <key>`.",
                }
            },
        },
    }


@functools.cache
def document_bytes() -> bytes:
    return to_json(openapi_document())


def handler() -> Handler:
    """Serves the document, built now if this process has not built it yet."""
    body = document_bytes()

    async def serve(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, content_type="application/json")

    return serve


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(model=name)}


def _json(description: str, schema: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


def _errors(descriptions: dict[str, str]) -> dict[str, Any]:
    out = {}
    for status, description in descriptions.items():
        out[status] = _json(description, "ErrorResponse")
        if status == "429":
            out[status]["headers"] = _RETRY_AFTER
    return out


def _probe(summary: str, schema: str, statuses: tuple[str, ...]) -> dict[str, Any]:
    return {
        "get": {
            "operationId": schema.lower(),
            "summary": summary,
            "security": [],
            "responses": {status: _json(summary, schema) for status in statuses},
        }
    }


def _version() -> str:
    try:
        return version("llm-gateway")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0.0.0"
