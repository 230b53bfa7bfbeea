"""Context-length stage: the prompt (estimated, see `accounting`) plus the completion it
may ask for must fit the model's `context_window`; the one place the prompt's token
estimate is computed (the rate limit reserves it, accounting falls back on it).

`context_length_exceeded_behavior: "error"` (the default) is a 400
`context_length_exceeded`. `"truncate"` drops the oldest messages that are neither system
messages nor the last user message (an assistant turn goes with the tool results that
answer it) until the request fits, and says how many in `x-gateway-truncated-messages`;
if even that cannot make it fit, it is the same 400.

Reads: `policy` (the request after the team's policy, and its route). Writes: `fitted`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gateway.accounting import message_size, prompt_tokens
from gateway.contract import (
    AssistantMessage,
    ChatCompletionRequest,
    Message,
    SystemMessage,
    ToolMessage,
)
from gateway.errors import InvalidRequest
from gateway.pipeline import Exchange, Stage, need
from gateway.routing import Route


@dataclass(frozen=True, slots=True)
class Fitted:
    request: ChatCompletionRequest  # the policy's request, or a shorter one that fits
    prompt_tokens: int  # its estimate
    truncated: int  # messages dropped to fit


class ContextLength(Stage):
    name = "context_length"

    async def enter(self, exchange: Exchange) -> None:
        decision = need(exchange.policy, "the policy decision")
        exchange.fitted = fit(decision.request, decision.route)


def fit(request: ChatCompletionRequest, route: Route) -> Fitted:
    sizes = [message_size(message) for message in request.messages]
    estimate = prompt_tokens(sizes)
    model, window = route.model, route.config.context_window
    completion = request.max_tokens or 0
    if window is None or estimate + completion <= window:
        return Fitted(request, estimate, 0)
    if request.context_length_exceeded_behavior != "truncate":
        raise _too_long(model, estimate, completion, window)
    messages = list(request.messages)
    while estimate + completion > window:
        victims = _oldest_droppable(messages)
        if not victims:
            raise _too_long(model, estimate, completion, window)
        messages = [m for i, m in enumerate(messages) if i not in victims]
        sizes = [s for i, s in enumerate(sizes) if i not in victims]
        estimate = prompt_tokens(sizes)
    dropped = len(request.messages) - len(messages)
    return Fitted(request.model_copy(update={"messages": messages}), estimate, dropped)


def _oldest_droppable(messages: Sequence[Message]) -> set[int]:
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
    for i, message in enumerate(messages):
        if isinstance(message, SystemMessage) or i == last_user:
            continue
        victims = {i}
        if isinstance(message, AssistantMessage) and message.tool_calls:
            j = i + 1
            while j < len(messages) and isinstance(messages[j], ToolMessage):
                victims.add(j)
                j += 1
        return victims
    return set()


def _too_long(model: str, estimate: int, completion: int, window: int) -> InvalidRequest:
    return InvalidRequest(
        f"The request needs about {estimate} prompt tokens plus {completion} "
        f"completion tokens, more than model '{model}' takes ({window}). Shorten the "
        'messages, lower max_tokens, or send context_length_exceeded_behavior: "truncate".',
        param="messages",
        code="context_length_exceeded",
    )
