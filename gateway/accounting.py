"""Token accounting: what a request is expected to cost before the call, and what it cost.

The estimator, used only to reserve rate-limit budget before the upstream answers, counts
a prompt as one token per 4 characters of text (OpenAI's rule of thumb for English) plus 4
tokens of framing per message, and a flat 85 tokens per image, video or audio part (the
cost of a low-detail image). For English prose it is within about ±25% of real tokenizers;
code, numbers and CJK text can run 2-3x higher. The error never accumulates: every
reservation is reconciled with the upstream's real `usage` after the call.

When a stream ends without `usage` (the client left, or the upstream cut it), the
completion is counted as one token per content event relayed, the granularity at which
OpenAI-compatible servers stream.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from gateway.contract import ChatCompletionRequest, Message, TextPart

CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4
TOKENS_PER_MEDIA_PART = 85


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


def message_size(message: Message) -> tuple[int, int]:
    """A message's fixed tokens (framing, media parts) and its characters of text."""
    tokens, chars = TOKENS_PER_MESSAGE, 0
    content = message.content
    if isinstance(content, str):
        chars = len(content)
    elif content is not None:
        for part in content:
            if isinstance(part, TextPart):
                chars += len(part.text)
            else:
                tokens += TOKENS_PER_MEDIA_PART
    return tokens, chars


def prompt_tokens(sizes: Iterable[tuple[int, int]]) -> int:
    """The estimate of a prompt made of messages of these sizes (see `message_size`)."""
    tokens = chars = 0
    for fixed, text in sizes:
        tokens += fixed
        chars += text
    return tokens + -(-chars // CHARS_PER_TOKEN)


def estimate_prompt_tokens(request: ChatCompletionRequest) -> int:
    return prompt_tokens(message_size(message) for message in request.messages)


def reserved_tokens(request: ChatCompletionRequest, prompt: int, default_max_tokens: int) -> int:
    """Prompt plus the most the request may generate."""
    return prompt + (request.max_tokens or default_max_tokens) * (request.n or 1)


def actual_usage(reported: Usage | None, prompt_estimate: int, content_events: int) -> Usage:
    if reported is not None:
        return reported
    return Usage(
        prompt_tokens=prompt_estimate if content_events else 0, completion_tokens=content_events
    )


def usage_of(answer: dict[str, Any]) -> Usage | None:
    """The `usage` of an OpenAI-shaped answer or chunk, when it has a valid one."""
    usage = answer.get("usage")
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return Usage(prompt_tokens=prompt, completion_tokens=completion)
