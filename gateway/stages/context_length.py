"""Context-length stage: the prompt (estimated, see `accounting`) plus the completion it
may ask for must fit the model's `context_window`.

`context_length_exceeded_behavior: "error"` (the default) is a 400
`context_length_exceeded`. `"truncate"` drops the oldest messages that are neither system
messages nor the last user message (an assistant turn goes with the tool results that
answer it) until the request fits, and says how many in `x-gateway-truncated-messages`;
if even that cannot make it fit, it is the same 400.
"""

from __future__ import annotations

from gateway.accounting import estimate_prompt_tokens
from gateway.contract import AssistantMessage, ChatCompletionRequest, SystemMessage, ToolMessage
from gateway.errors import InvalidRequest
from gateway.routing import Route


def fit_context(route: Route, request: ChatCompletionRequest) -> int:
    """Messages dropped to fit (0 when it fits); raises when it cannot fit."""
    behaviour = request.context_length_exceeded_behavior or "error"
    if "context_length_exceeded_behavior" not in route.native:
        request.context_length_exceeded_behavior = None  # enforced here, not upstream
    window = route.config.context_window
    if window is None:
        return 0
    completion = request.max_tokens or 0
    if estimate_prompt_tokens(request) + completion <= window:
        return 0
    if behaviour == "error":
        raise _too_long(route, request, window)
    dropped = 0
    while estimate_prompt_tokens(request) + completion > window:
        victims = _oldest_droppable(request)
        if not victims:
            raise _too_long(route, request, window)
        request.messages = [m for i, m in enumerate(request.messages) if i not in victims]
        dropped += len(victims)
    return dropped


def _oldest_droppable(request: ChatCompletionRequest) -> set[int]:
    messages = request.messages
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


def _too_long(route: Route, request: ChatCompletionRequest, window: int) -> InvalidRequest:
    estimate = estimate_prompt_tokens(request)
    return InvalidRequest(
        f"The request needs about {estimate} prompt tokens plus {request.max_tokens or 0} "
        f"completion tokens, more than model '{route.model}' takes ({window}). Shorten the "
        'messages, lower max_tokens, or send context_length_exceeded_behavior: "truncate".',
        param="messages",
        code="context_length_exceeded",
    )
