"""The request contract of `POST /v1/chat/completions` (docs/chat-completions-api.md).

Owns the wire model of a chat completion request, its ranges, and its normalization: the
forms real OpenAI clients send (`max_completion_tokens`, `logprobs: true` + `top_logprobs`,
`response_format.json_schema`, `stop` as a string, the `developer` role, an earlier answer's
message appended to the history with its response-only keys) are accepted and rewritten
into the contract's one canonical form, so later stages and dialects see a single shape.
Cross-field rules raise `InvalidRequest` naming the parameter.

Validation is strict (no "0.5" for a float, no 1 for a bool) and unknown fields are
rejected: a gateway that guesses changes the answer without telling anyone.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    model_validator,
)
from pydantic_core import from_json

from gateway.errors import InvalidRequest

_MODEL_CONFIG = ConfigDict(
    extra="forbid",
    strict=True,
    hide_input_in_errors=True,
    populate_by_name=True,
    # JSON has no Infinity or NaN; an upstream would choke on them.
    allow_inf_nan=False,
)


# Error type of a union whose tag field is missing or unknown: "discriminator:<field>".
DISCRIMINATOR_ERROR = "discriminator"


class _Model(BaseModel):
    model_config = _MODEL_CONFIG


def _on(field: str, tags: dict[str, str]) -> Discriminator:
    """A discriminator on `field` whose union tags ("<user>") cannot be mistaken for field
    names in error locations, and whose error lists the accepted values, not the input."""

    def pick(value: Any) -> str | None:
        raw = value.get(field) if isinstance(value, dict) else getattr(value, field, None)
        return tags.get(raw) if isinstance(raw, str) else None

    accepted = ", ".join(f"'{value}'" for value in tags)
    return Discriminator(
        pick,
        custom_error_type=f"{DISCRIMINATOR_ERROR}:{field}",
        custom_error_message=f"'{field}' must be one of {accepted}",
    )


def _media_url(url: str) -> str:
    if not url.startswith(("https://", "http://", "data:")):
        raise ValueError("expected an http(s):// or data: URL")
    return url


NonEmptyStr = Annotated[str, StringConstraints(min_length=1)]
# Media may be fetched by the model server: only web and inline data URLs make sense.
MediaUrl = Annotated[str, AfterValidator(_media_url)]
UnitInterval = Annotated[float, Field(ge=0.0, le=1.0)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
# Upstreams parse counts as 32-bit and seeds as 64-bit integers.
INT32_MAX = 2**31 - 1
TokenCount = Annotated[int, Field(ge=1, le=INT32_MAX)]
TokenId = Annotated[str, StringConstraints(pattern=r"^\d+$")]
LogitBias = dict[TokenId, Annotated[float, Field(ge=-100.0, le=100.0)]]
FunctionName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


# ---------------------------------------------------------------- message content parts


class TextPart(_Model):
    type: Literal["text"]
    text: str


class ImageUrl(_Model):
    url: MediaUrl
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Model):
    type: Literal["image_url"]
    image_url: ImageUrl


class MediaUrlObject(_Model):
    url: MediaUrl


class VideoPart(_Model):
    type: Literal["video_url"]
    video_url: MediaUrlObject


class AudioPart(_Model):
    type: Literal["audio_url"]
    audio_url: MediaUrlObject


ContentPart = Annotated[
    Annotated[TextPart, Tag("<text>")]
    | Annotated[ImagePart, Tag("<image_url>")]
    | Annotated[VideoPart, Tag("<video_url>")]
    | Annotated[AudioPart, Tag("<audio_url>")],
    _on(
        "type",
        {
            "text": "<text>",
            "image_url": "<image_url>",
            "video_url": "<video_url>",
            "audio_url": "<audio_url>",
        },
    ),
]
TextContent = str | Annotated[list[TextPart], Field(min_length=1)]
UserContent = str | Annotated[list[ContentPart], Field(min_length=1)]


# ---------------------------------------------------------------- messages


# Keys of an answer's message that a client sends back when it appends the message (or the
# SDK's object for it) to the history. They are accepted only when they say nothing beyond
# the message itself (null, empty, or a re-statement of its content), checked by
# `_drop_response_only_keys`, and never reach a dialect (nor a dump of the request).
def _response_only() -> Any:
    return Field(default=None, exclude=True)


class FunctionCall(_Model):
    name: FunctionName
    arguments: str
    # Response-only: the SDK's parse() result holds the arguments parsed.
    parsed_arguments: Any = _response_only()


class ToolCall(_Model):
    id: NonEmptyStr
    type: Literal["function"]
    function: FunctionCall
    # Response-only: the SDK's stream() helper keeps the call's index in the stream.
    index: int | None = _response_only()


class SystemMessage(_Model):
    # OpenAI's newer clients send "developer"; it is normalized to "system".
    role: Literal["system", "developer"]
    content: TextContent
    name: str | None = None


class UserMessage(_Model):
    role: Literal["user"]
    content: UserContent
    name: str | None = None


class AssistantMessage(_Model):
    role: Literal["assistant"]
    content: TextContent | None = None
    name: str | None = None
    # Empty means none: vLLM and Together answer `tool_calls: []`.
    tool_calls: list[ToolCall] | None = None
    # Present when a client appends a previous response message to the history.
    refusal: str | None = None
    # Response-only (see _response_only): OpenAI answers `annotations: []`; the SDK's
    # stream() and parse() objects add `parsed` and nulls for `audio` and `function_call`;
    # vLLM answers nulls for `reasoning_content` (and `reasoning` in newer versions).
    annotations: list[Any] | None = _response_only()
    parsed: Any = _response_only()
    audio: Any = _response_only()
    function_call: Any = _response_only()
    reasoning_content: Any = _response_only()
    reasoning: Any = _response_only()

    @model_validator(mode="after")
    def _says_something(self) -> AssistantMessage:
        if self.content is None and not self.tool_calls:
            raise ValueError("an assistant message needs 'content' or 'tool_calls'")
        return self


class ToolMessage(_Model):
    role: Literal["tool"]
    content: TextContent
    tool_call_id: NonEmptyStr


Message = Annotated[
    Annotated[SystemMessage, Tag("<system>")]
    | Annotated[UserMessage, Tag("<user>")]
    | Annotated[AssistantMessage, Tag("<assistant>")]
    | Annotated[ToolMessage, Tag("<tool>")],
    _on(
        "role",
        {
            "system": "<system>",
            "developer": "<system>",
            "user": "<user>",
            "assistant": "<assistant>",
            "tool": "<tool>",
        },
    ),
]


# ---------------------------------------------------------------- tools


class FunctionDefinition(_Model):
    name: FunctionName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Model):
    type: Literal["function"]
    function: FunctionDefinition


class ToolChoiceFunction(_Model):
    name: FunctionName


class ToolChoiceObject(_Model):
    type: Literal["function"]
    function: ToolChoiceFunction


# ---------------------------------------------------------------- response_format


class TextFormat(_Model):
    type: Literal["text"]


class JsonObjectFormat(_Model):
    type: Literal["json_object"]


class OpenAIJsonSchema(_Model):
    name: FunctionName
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    description: str | None = None
    strict: bool | None = None


class JsonSchemaFormat(_Model):
    """Canonical form: `schema` at the top (the contract's), with OpenAI's `name`,
    `description` and `strict` beside it. OpenAI's nested
    `json_schema: {name, description, schema, strict}` is accepted and folded into it."""

    type: Literal["json_schema"]
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    json_schema: OpenAIJsonSchema | None = None
    name: str | None = None
    # Tells the model what the output is for: it changes the answer, so a dialect with no
    # place for it refuses it.
    description: str | None = None
    strict: bool | None = None

    @model_validator(mode="after")
    def _fold_openai_form(self) -> JsonSchemaFormat:
        if self.json_schema is not None:
            if self.schema_ is not None:
                raise InvalidRequest(
                    "Give the schema either as 'schema' or as 'json_schema', not both.",
                    param="response_format.json_schema",
                )
            if self.json_schema.schema_ is None:
                raise InvalidRequest(
                    "Missing required parameter: 'response_format.json_schema.schema'.",
                    param="response_format.json_schema.schema",
                )
            if self.name is not None or self.description is not None or self.strict is not None:
                raise InvalidRequest(
                    "Give 'name', 'description' and 'strict' inside 'json_schema' or beside "
                    "'schema', not both.",
                    param="response_format.json_schema",
                )
            self.schema_ = self.json_schema.schema_
            self.name = self.json_schema.name
            self.description = self.json_schema.description
            self.strict = self.json_schema.strict
            self.json_schema = None
        elif self.schema_ is None:
            raise InvalidRequest(
                "Missing required parameter: 'response_format.schema' "
                "(a JSON schema object) for type 'json_schema'.",
                param="response_format.schema",
            )
        return self


class RegexFormat(_Model):
    type: Literal["regex"]
    pattern: NonEmptyStr


ResponseFormat = Annotated[
    Annotated[TextFormat, Tag("<text>")]
    | Annotated[JsonObjectFormat, Tag("<json_object>")]
    | Annotated[JsonSchemaFormat, Tag("<json_schema>")]
    | Annotated[RegexFormat, Tag("<regex>")],
    _on(
        "type",
        {
            "text": "<text>",
            "json_object": "<json_object>",
            "json_schema": "<json_schema>",
            "regex": "<regex>",
        },
    ),
]


# ---------------------------------------------------------------- the request


class StreamOptions(_Model):
    include_usage: bool | None = None


class Reasoning(_Model):
    enabled: bool


class ChatCompletionRequest(_Model):
    """A chat completion request, normalized to the contract's canonical form."""

    model: NonEmptyStr
    messages: Annotated[list[Message], Field(min_length=1)]

    max_tokens: TokenCount | None = None
    temperature: UnitInterval | None = None
    top_p: UnitInterval | None = None
    top_k: Annotated[int, Field(ge=1, le=INT32_MAX)] | None = None
    min_p: UnitInterval | None = None
    repetition_penalty: Annotated[float, Field(gt=0.0)] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    stop: str | list[str] | None = None
    n: Annotated[int, Field(ge=1, le=128)] | None = None
    seed: Annotated[int, Field(ge=-(2**63), le=2**63 - 1)] | None = None

    stream: bool | None = None
    stream_options: StreamOptions | None = None
    # Canonical: an int k (top-k log probs, 0-20). OpenAI's bool form is normalized.
    logprobs: bool | Annotated[int, Field(ge=0, le=20)] | None = None
    echo: bool | None = None
    logit_bias: LogitBias | None = None

    response_format: ResponseFormat | None = None

    tools: list[Tool] | None = None
    tool_choice: Literal["auto", "none", "required"] | ToolChoiceObject | None = None
    parallel_tool_calls: bool | None = None

    safety_model: NonEmptyStr | None = None
    compliance: Literal["hipaa"] | None = None

    reasoning_effort: Literal["low", "medium", "high"] | None = None
    reasoning: Reasoning | None = None

    context_length_exceeded_behavior: Literal["truncate", "error"] | None = None

    # OpenAI client fields, accepted and normalized away or passed on.
    max_completion_tokens: TokenCount | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    user: str | None = None

    @model_validator(mode="after")
    def _normalize(self) -> ChatCompletionRequest:
        if self.max_completion_tokens is not None:
            if self.max_tokens is not None and self.max_tokens != self.max_completion_tokens:
                raise InvalidRequest(
                    "'max_tokens' and 'max_completion_tokens' disagree; send one of them.",
                    param="max_completion_tokens",
                )
            self.max_tokens = self.max_completion_tokens
            self.max_completion_tokens = None

        if isinstance(self.logprobs, bool):
            self.logprobs = (self.top_logprobs or 0) if self.logprobs else None
        elif self.top_logprobs is not None:
            raise InvalidRequest(
                "'top_logprobs' requires 'logprobs': true (or give 'logprobs' as an integer).",
                param="top_logprobs",
            )
        if self.logprobs is None and self.top_logprobs is not None:
            raise InvalidRequest("'top_logprobs' requires 'logprobs': true.", param="top_logprobs")
        self.top_logprobs = None

        if isinstance(self.stop, str):
            self.stop = [self.stop]

        if self.stream_options is not None and not self.stream:
            raise InvalidRequest(
                "'stream_options' is only allowed when 'stream' is true.",
                param="stream_options",
            )

        for i, message in enumerate(self.messages):
            if isinstance(message, SystemMessage) and message.role == "developer":
                message.role = "system"
            elif isinstance(message, AssistantMessage):
                _drop_response_only_keys(message, f"messages[{i}]")

        self._check_tools()
        return self

    def _check_tools(self) -> None:
        if self.tool_choice is None or self.tool_choice == "none":
            return
        if not self.tools:
            raise InvalidRequest(
                "'tool_choice' is only allowed when 'tools' are specified.", param="tool_choice"
            )
        if isinstance(self.tool_choice, ToolChoiceObject):
            wanted = self.tool_choice.function.name
            if all(tool.function.name != wanted for tool in self.tools):
                raise InvalidRequest(
                    "'tool_choice.function.name' names no function in 'tools'.",
                    param="tool_choice.function.name",
                )

    @property
    def is_stream(self) -> bool:
        return bool(self.stream)


# Response-only keys taken only null, and why one with a value is refused, not dropped.
_NULL_ONLY = {
    "audio": "an earlier audio answer cannot be passed to an upstream",
    "function_call": "the deprecated 'function_call' is not supported; use 'tool_calls'",
    "reasoning_content": "earlier reasoning cannot be passed to an upstream",
    "reasoning": "earlier reasoning cannot be passed to an upstream",
}


def _drop_response_only_keys(message: AssistantMessage, path: str) -> None:
    """Checks that the response-only keys of an assistant message from the history say
    nothing the message does not, and removes them; raises InvalidRequest naming the key.

    `parsed` and `parsed_arguments` may only re-state `content` and `arguments` as JSON, a
    call's `index` only its position: anything else would be data the model never sees."""
    for key, reason in _NULL_ONLY.items():
        if getattr(message, key) is not None:
            raise InvalidRequest(f"'{path}.{key}' must be null: {reason}.", param=f"{path}.{key}")
        setattr(message, key, None)
    if message.annotations:
        raise InvalidRequest(
            f"'{path}.annotations' must be null or empty: citations cannot be passed to an "
            "upstream.",
            param=f"{path}.annotations",
        )
    message.annotations = None
    if message.parsed is not None:
        text = None if message.content is None else "".join(_texts(message.content))
        if not _is_json_of(message.parsed, text):
            raise InvalidRequest(
                f"'{path}.parsed' must be null or the JSON of '{path}.content'.",
                param=f"{path}.parsed",
            )
        message.parsed = None
    for j, call in enumerate(message.tool_calls or ()):
        call_path = f"{path}.tool_calls[{j}]"
        if call.index is not None and call.index != j:
            raise InvalidRequest(
                f"'{call_path}.index' must be null or the call's position in '{path}.tool_calls'.",
                param=f"{call_path}.index",
            )
        call.index = None
        parsed = call.function.parsed_arguments
        if parsed is not None and not _is_json_of(parsed, call.function.arguments):
            raise InvalidRequest(
                f"'{call_path}.function.parsed_arguments' must be null or the JSON of "
                f"'{call_path}.function.arguments'.",
                param=f"{call_path}.function.parsed_arguments",
            )
        call.function.parsed_arguments = None
    if not message.tool_calls:
        message.tool_calls = None


def _texts(content: str | list[TextPart]) -> list[str]:
    return [content] if isinstance(content, str) else [part.text for part in content]


def _is_json_of(value: Any, text: str | None) -> bool:
    if text is None:
        return False
    try:
        return bool(from_json(text) == value)
    except ValueError:
        return False
