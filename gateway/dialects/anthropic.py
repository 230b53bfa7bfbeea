"""The `anthropic` dialect: Anthropic's Messages API (`POST /v1/messages`).

Owns both directions of the translation. Requests: system messages move to the top-level
`system`, tool results and tool calls become `tool_result`/`tool_use` blocks, images become
`image` blocks, consecutive messages of one role are merged (Anthropic alternates roles),
and `max_tokens`, which Anthropic requires, defaults to `DEFAULT_MAX_TOKENS`. Answers:
a `message` becomes a `chat.completion`, and a stream of Anthropic events becomes OpenAI
chunks, with the usage chunk built from Anthropic's own counts.

What Anthropic cannot honour is refused with the parameter's path, never dropped: a lost
penalty, seed or schema silently changes the answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic_core import from_json

from gateway.contract import (
    AssistantMessage,
    AudioPart,
    ChatCompletionRequest,
    ImagePart,
    Message,
    SystemMessage,
    TextPart,
    ToolChoiceObject,
    ToolMessage,
    UserMessage,
    VideoPart,
)
from gateway.dialects.anthropic_answers import UNREADABLE, AnthropicStreamTranslator, completion
from gateway.dialects.base import GATEWAY_ENFORCED, Fate, unsupported
from gateway.errors import InvalidRequest, UpstreamUnavailable

ANTHROPIC_VERSION = "2023-06-01"
# Anthropic requires max_tokens; a client that sends none gets this many at most.
DEFAULT_MAX_TOKENS = 4096

_UNSUPPORTED = (
    "min_p",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "logprobs",
    "echo",
    "logit_bias",
    "response_format",
    "reasoning_effort",
    "reasoning",
)
_IMAGE_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})


class AnthropicDialect:
    name = "anthropic"
    path = "/messages"
    fates = (
        {
            "model": Fate.PASS,
            "temperature": Fate.PASS,  # the contract's 0-1 is Anthropic's range
            "top_p": Fate.PASS,
            "top_k": Fate.PASS,
            "stream": Fate.PASS,
            "messages": Fate.TRANSLATE,  # system on top, tool blocks, image blocks
            "max_tokens": Fate.TRANSLATE,  # required upstream: DEFAULT_MAX_TOKENS when absent
            "stop": Fate.TRANSLATE,  # stop_sequences
            "tools": Fate.TRANSLATE,  # name, description, input_schema
            "tool_choice": Fate.TRANSLATE,  # {"type": auto | none | any | tool}
            "parallel_tool_calls": Fate.TRANSLATE,  # false: tool_choice.disable_parallel_tool_use
            "user": Fate.TRANSLATE,  # metadata.user_id
            "stream_options": Fate.TRANSLATE,  # the usage chunk is built from Anthropic's usage
            "n": Fate.TRANSLATE,  # only 1
        }
        | dict.fromkeys(GATEWAY_ENFORCED, Fate.GATEWAY)
        | dict.fromkeys(_UNSUPPORTED, Fate.UNSUPPORTED)
    )

    def headers(self, api_key: str | None) -> dict[str, str]:
        headers = {"anthropic-version": ANTHROPIC_VERSION}
        if api_key:
            headers["x-api-key"] = api_key
        return headers

    def build_body(
        self, request: ChatCompletionRequest, upstream_model: str, public_model: str
    ) -> dict[str, Any]:
        # The body is built field by field, so a parameter left over by a caller that
        # skipped refuse_or_drop would vanish without a word: refuse it here as well.
        for param in _UNSUPPORTED:
            if getattr(request, param) is not None:
                raise unsupported(param, public_model, self.name)
        if request.n not in (None, 1):
            raise unsupported("n", public_model, self.name)

        system, messages = _messages(request.messages, public_model, self.name)
        body: dict[str, Any] = {
            "model": upstream_model,
            "max_tokens": request.max_tokens or DEFAULT_MAX_TOKENS,
        }
        if system is not None:
            body["system"] = system
        body["messages"] = messages
        for param in ("temperature", "top_p", "top_k", "stream"):
            value = getattr(request, param)
            if value is not None:
                body[param] = value
        if request.stop:
            body["stop_sequences"] = request.stop
        if request.user is not None:
            body["metadata"] = {"user_id": request.user}
        if request.tools:
            body["tools"] = _tools(request, public_model, self.name)
            tool_choice = _tool_choice(request)
            if tool_choice is not None:
                body["tool_choice"] = tool_choice
        return body

    def translate_response(self, body: dict[str, Any], public_model: str) -> dict[str, Any]:
        try:
            return completion(body, public_model)
        except UNREADABLE:
            raise UpstreamUnavailable(
                "The upstream sent an answer the gateway cannot read."
            ) from None

    def stream_translator(self, include_usage: bool) -> AnthropicStreamTranslator:
        return AnthropicStreamTranslator(include_usage)


# ---------------------------------------------------------------- requests


def _messages(
    messages: Sequence[Message], public_model: str, dialect: str
) -> tuple[str | None, list[dict[str, Any]]]:
    """The top-level system prompt and the alternating user/assistant turns."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        if isinstance(message, SystemMessage):
            # Anthropic has one system prompt, at the top: every system text is a paragraph.
            system.extend(_texts(message.content))
            continue
        # A message's `name` has no Anthropic counterpart, nor has an echoed `refusal`.
        role = "assistant" if isinstance(message, AssistantMessage) else "user"
        if isinstance(message, UserMessage):
            blocks = _user_blocks(message, i, public_model, dialect)
        elif isinstance(message, AssistantMessage):
            blocks = _assistant_blocks(message, i)
        else:
            blocks = [_tool_result(message)]
        # Anthropic alternates roles; the client's consecutive messages are one turn.
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    for turn in turns:
        content = turn["content"]
        if len(content) == 1 and content[0]["type"] == "text":
            turn["content"] = content[0]["text"]
    return ("\n\n".join(system) if system else None), turns


def _texts(content: str | list[TextPart]) -> list[str]:
    return [content] if isinstance(content, str) else [part.text for part in content]


def _text_blocks(content: str | list[TextPart] | None) -> list[dict[str, Any]]:
    # Anthropic refuses empty text blocks; an empty string says nothing anyway.
    if content is None:
        return []
    return [{"type": "text", "text": text} for text in _texts(content) if text]


def _user_blocks(
    message: UserMessage, i: int, public_model: str, dialect: str
) -> list[dict[str, Any]]:
    if isinstance(message.content, str):
        return [{"type": "text", "text": message.content}]
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(message.content):
        if isinstance(part, TextPart):
            blocks.append({"type": "text", "text": part.text})
        elif isinstance(part, ImagePart):
            # `detail` has no Anthropic counterpart: it tunes cost, not the answer.
            blocks.append(_image(part.image_url.url, f"messages[{i}].content[{j}].image_url.url"))
        elif isinstance(part, VideoPart | AudioPart):
            raise unsupported(f"messages[{i}].content[{j}]", public_model, dialect)
    return blocks


def _image(url: str, param: str) -> dict[str, Any]:
    if not url.startswith("data:"):
        return {"type": "image", "source": {"type": "url", "url": url}}
    header, comma, data = url[5:].partition(",")
    media_type, _, encoding = header.partition(";")
    if not comma or encoding != "base64" or media_type not in _IMAGE_MEDIA_TYPES:
        raise InvalidRequest(
            f"'{param}': Anthropic takes inline images only as base64 data URLs of type "
            "image/jpeg, image/png, image/gif or image/webp.",
            param=param,
        )
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}


def _assistant_blocks(message: AssistantMessage, i: int) -> list[dict[str, Any]]:
    blocks = _text_blocks(message.content)
    for j, call in enumerate(message.tool_calls or ()):
        param = f"messages[{i}].tool_calls[{j}].function.arguments"
        arguments = call.function.arguments
        try:
            # A function without parameters may come back with "" as its arguments.
            tool_input = from_json(arguments) if arguments.strip() else {}
        except ValueError:
            tool_input = None
        if not isinstance(tool_input, dict):
            raise InvalidRequest(f"'{param}' must be a JSON object.", param=param)
        blocks.append(
            {"type": "tool_use", "id": call.id, "name": call.function.name, "input": tool_input}
        )
    return blocks


def _tool_result(message: ToolMessage) -> dict[str, Any]:
    content: str | list[dict[str, Any]] = (
        message.content if isinstance(message.content, str) else _text_blocks(message.content)
    )
    return {"type": "tool_result", "tool_use_id": message.tool_call_id, "content": content}


def _tools(request: ChatCompletionRequest, public_model: str, dialect: str) -> list[dict[str, Any]]:
    tools: list[dict[str, Any]] = []
    for k, tool in enumerate(request.tools or ()):
        function = tool.function
        if function.strict:
            # Guaranteed schema adherence is not something Anthropic's tools promise.
            raise unsupported(f"tools[{k}].function.strict", public_model, dialect)
        definition: dict[str, Any] = {"name": function.name}
        if function.description is not None:
            definition["description"] = function.description
        definition["input_schema"] = function.parameters or {"type": "object", "properties": {}}
        tools.append(definition)
    return tools


def _tool_choice(request: ChatCompletionRequest) -> dict[str, Any] | None:
    choice = request.tool_choice
    if isinstance(choice, ToolChoiceObject):
        translated: dict[str, Any] = {"type": "tool", "name": choice.function.name}
    elif choice == "required":
        translated = {"type": "any"}
    elif choice == "none":
        return {"type": "none"}
    elif choice == "auto" or request.parallel_tool_calls is False:
        translated = {"type": "auto"}
    else:
        return None
    if request.parallel_tool_calls is False:
        translated["disable_parallel_tool_use"] = True
    return translated
