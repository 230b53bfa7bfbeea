"""Validation stage: the raw HTTP body to a normalized `ChatCompletionRequest`, or a 400/413.

Owns the checks of the body as sent (content type, size) and the translation of pydantic's
errors into one OpenAI error whose `param` is the dotted path of the offending
field (`messages[2].content[0].image_url.url`). The submitted value is never quoted back:
it may be a secret or patient data. A body with a Content-Encoding never gets here: the
middleware refuses it, on every path, before any stage (app.py). A body that arrives too
slowly, or breaks its chunked framing, fails the read with 408 or 400 (connections.py).

Reads: the HTTP request. Writes: `request`.
"""

from __future__ import annotations

from aiohttp import web
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from gateway.contract import DISCRIMINATOR_ERROR, ChatCompletionRequest
from gateway.errors import InvalidRequest, PayloadTooLarge, field_path
from gateway.pipeline import Exchange, Stage

# Union branch names in pydantic's error locations ("str", "bool"); never our field names.
_TYPE_WORDS = frozenset({"str", "int", "float", "bool", "none", "dict", "list"})
_MAX_NAME_IN_MESSAGE = 64
# Objects whose keys are the client's own data: errors inside name only the parameter.
_CLIENT_KEYED = frozenset({"logit_bias"})


class Validator(Stage):
    name = "validate"

    def __init__(self, max_body_bytes: int) -> None:
        self._max_body_bytes = max_body_bytes

    async def enter(self, exchange: Exchange) -> None:
        exchange.request = await read_chat_request(exchange.http, self._max_body_bytes)


async def read_chat_request(request: web.Request, max_body_bytes: int) -> ChatCompletionRequest:
    content_type = request.headers.get("Content-Type", "")
    if content_type.split(";", 1)[0].strip().lower() != "application/json":
        raise InvalidRequest(
            "The request body must be JSON, sent with 'Content-Type: application/json'.",
            code="unsupported_content_type",
        )
    if request.content_length is not None and request.content_length > max_body_bytes:
        raise _too_large(max_body_bytes)
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(max_body_bytes) from None
    return parse_chat_request(body)


def parse_chat_request(body: bytes) -> ChatCompletionRequest:
    try:
        return ChatCompletionRequest.model_validate_json(body)
    except ValidationError as exc:
        raise to_invalid_request(exc.errors(include_input=False, include_url=False)) from None


def to_invalid_request(errors: list[ErrorDetails]) -> InvalidRequest:
    """One error for the client: the most specific one pydantic found."""
    error = min(errors, key=_specificity)
    kind = error["type"]
    param = param_path(error["loc"])
    if kind == "json_invalid":
        return InvalidRequest(f"The request body is not valid JSON: {_json_reason(error)}.")
    if kind in ("model_type", "model_attributes_type") and not error["loc"]:
        return InvalidRequest("The request body must be a JSON object.")
    if kind.startswith(DISCRIMINATOR_ERROR + ":"):
        field = kind.partition(":")[2]
        param = f"{param}.{field}" if param else field
        return InvalidRequest(f"Invalid value for '{param}': {error['msg']}.", param=param)
    if kind == "extra_forbidden":
        # The unknown name is the client's own text: name it, but bounded.
        name = str(error["loc"][-1])[:_MAX_NAME_IN_MESSAGE]
        parent = param_path(error["loc"][:-1])
        shown = f"{parent}.{name}" if parent else name
        return InvalidRequest(
            f"Unrecognized request argument supplied: '{shown}'.",
            param=shown,
            code="unknown_parameter",
        )
    if kind == "missing":
        return InvalidRequest(f"Missing required parameter: '{param}'.", param=param)
    message = error["msg"].removeprefix("Value error, ")
    return InvalidRequest(f"Invalid value for '{param}': {message}.", param=param)


def param_path(loc: tuple[int | str, ...]) -> str:
    """pydantic's location without union branch names, and nothing inside an object whose
    keys are the client's data, as a field path."""
    kept: list[int | str] = []
    for part in loc:
        if len(kept) == 1 and kept[0] in _CLIENT_KEYED:
            break
        if isinstance(part, int) or (
            part.isidentifier() and part not in _TYPE_WORDS and not part[0].isupper()
        ):
            kept.append(part)
    return field_path(kept)


def _specificity(error: ErrorDetails) -> tuple[bool, int]:
    # A failed union tries every branch; the branch that got furthest, or failed on a
    # constraint rather than on the type, says what the client meant.
    return (error["type"].endswith("_type"), -len(error["loc"]))


def _json_reason(error: ErrorDetails) -> str:
    message = error["msg"]
    prefix = "Invalid JSON: "
    return message[len(prefix) :] if message.startswith(prefix) else message


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body is larger than the limit of {limit} bytes.")
