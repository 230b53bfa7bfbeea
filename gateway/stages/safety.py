"""Safety stages: asking a safety model (Llama Guard's format) whether a request, and by
policy a non-streamed answer, is safe, for upstreams that do not do it natively.

The safety model is an ordinary configured model with its own upstreams, called through
the same upstream caller (balancing, retries, and, for a request under HIPAA, only
HIPAA-eligible upstreams). It is sent the conversation as the model will see it: the user
and assistant turns, text and images (Llama Guard 4 reads images; video and audio parts are
not sent, no classifier here reads them); a conversation with no such turn is classified by
its system text. Its answer is `safe`, or `unsafe` and a line of violated categories
(`S1,S10`). An unsafe verdict is a 400 `content_policy_violation` naming the categories,
and the generation upstream never receives the request. A conversation with nothing to
classify at all (every text empty) is not sent, and its verdict is `empty`. A safety model
that cannot answer refuses the request (503) or lets it proceed, as the policy says;
proceeding is counted.

`SafetyCheck` reads `policy` and `fitted` and writes `safety_verdict`; `AnswerCheck` also
reads `answer` and writes `answer_verdict`.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic_core import from_json

from gateway.contract import (
    AssistantMessage,
    ChatCompletionRequest,
    ImagePart,
    SystemMessage,
    TextPart,
    UserMessage,
)
from gateway.errors import ContentPolicyViolation, GatewayError, UpstreamUnavailable
from gateway.observability.metrics import GatewayMetrics
from gateway.pipeline import Exchange, Stage, need
from gateway.policies import SafetyPolicy
from gateway.routing import CallRecord
from gateway.stages.route import Router
from gateway.stages.translate import translate
from gateway.upstream.caller import UpstreamCaller
from gateway.upstream.client import JsonAnswer

_CATEGORY = re.compile(r"S\d{1,2}")
# What a turn sent to the classifier holds: plain text, or OpenAI content parts.
Turn = dict[str, Any]


class SafetyModel:
    """Asks the safety model for a verdict, and counts and applies it."""

    def __init__(self, router: Router, caller: UpstreamCaller, metrics: GatewayMetrics) -> None:
        self._router = router
        self._caller = caller
        self._metrics = metrics

    async def verdict(
        self,
        safety_model: str,
        policy: SafetyPolicy | None,
        conversation: list[Turn],
        exchange: Exchange,
    ) -> str:
        """The verdict on `conversation`; raises ContentPolicyViolation when unsafe, and
        UpstreamUnavailable when the model cannot answer and the policy refuses then."""
        if not conversation:
            self._metrics.safety_verdicts.labels(model=safety_model, verdict="empty").inc()
            return "empty"
        try:
            verdict, categories = await self._classify(safety_model, conversation, exchange)
        except GatewayError:
            self._metrics.safety_verdicts.labels(model=safety_model, verdict="unavailable").inc()
            if policy is not None and policy.on_unavailable == "proceed":
                return "unavailable"
            raise UpstreamUnavailable(
                "The safety model could not classify the request, and this team's policy "
                "refuses unclassified requests.",
                code="safety_model_unavailable",
            ) from None
        self._metrics.safety_verdicts.labels(model=safety_model, verdict=verdict).inc()
        if verdict == "unsafe":
            listed = ", ".join(categories) or "unspecified"
            raise ContentPolicyViolation(
                f"The safety model classified this content as unsafe (categories: {listed})."
            )
        return verdict

    async def _classify(
        self, safety_model: str, conversation: list[Turn], exchange: Exchange
    ) -> tuple[str, list[str]]:
        route = self._router.route(safety_model)
        if exchange.hipaa:
            if route.hipaa is None:
                raise UpstreamUnavailable("The safety model has no HIPAA-eligible upstream.")
            route = route.hipaa
        request = ChatCompletionRequest.model_validate(
            {"model": safety_model, "messages": conversation, "max_tokens": 20, "temperature": 0}
        )
        # The classification is its own call: its attempts must not overwrite the
        # request's own upstream in the audit line.
        claimant = None if exchange.policy is None else exchange.policy.claimant
        if claimant is None and exchange.team is not None:
            claimant = exchange.team.queue_claimant
        answer = await self._caller.call(
            route, translate(route, request), False, exchange.request_id, CallRecord(), claimant
        )
        if not isinstance(answer, JsonAnswer):  # asked for a whole answer, so never
            raise UpstreamUnavailable("The safety model streamed instead of answering.")
        return parse_verdict(from_json(answer.body))


class SafetyCheck(Stage):
    """The request, before it costs a generation."""

    name = "safety"

    def __init__(self, safety: SafetyModel) -> None:
        self._safety = safety

    async def enter(self, exchange: Exchange) -> None:
        decision = need(exchange.policy, "the policy decision")
        if decision.safety_model is None:
            return
        if decision.native_safety:
            exchange.safety_verdict = "native"
            return
        conversation = conversation_of(need(exchange.fitted, "the request").request)
        try:
            verdict = await self._safety.verdict(
                decision.safety_model, decision.safety, conversation, exchange
            )
        except ContentPolicyViolation:
            exchange.safety_verdict = "unsafe"
            raise
        except UpstreamUnavailable:
            exchange.safety_verdict = "unavailable"
            raise
        exchange.safety_verdict = verdict


class AnswerCheck(Stage):
    """A whole answer, before the client sees it, when the policy says `check_output`
    (streams are checked on input only: their events are gone before the end is known)."""

    name = "answer_safety"

    def __init__(self, safety: SafetyModel) -> None:
        self._safety = safety

    async def enter(self, exchange: Exchange) -> None:
        decision = need(exchange.policy, "the policy decision")
        answer = exchange.answer
        policy = decision.safety
        if (
            not isinstance(answer, JsonAnswer)
            or decision.safety_model is None
            or decision.native_safety
            or policy is None
            or not policy.check_output
        ):
            return
        text = answer_text(answer.body)
        if not text:
            return
        said = conversation_of(need(exchange.fitted, "the request").request)
        said.append({"role": "assistant", "content": text})
        try:
            exchange.answer_verdict = await self._safety.verdict(
                decision.safety_model, policy, _alternating(said), exchange
            )
        except ContentPolicyViolation:
            exchange.answer_verdict = "unsafe"
            raise
        except UpstreamUnavailable:
            exchange.answer_verdict = "unavailable"
            raise


def parse_verdict(answer: Any) -> tuple[str, list[str]]:
    """Llama Guard's `safe` / `unsafe\\nS1,S2` from a chat.completion."""
    try:
        text = str(answer["choices"][0]["message"]["content"]).strip()
    except (LookupError, TypeError):
        raise UpstreamUnavailable("The safety model's answer has no verdict.") from None
    first, _, rest = text.partition("\n")
    verdict = first.strip().lower()
    if verdict == "safe":
        return "safe", []
    if verdict == "unsafe":
        # Only Llama Guard's category codes are kept: anything else a classifier says may
        # quote the content, which must not reach an error body.
        codes = [c.strip() for c in rest.replace("\n", ",").split(",")]
        return "unsafe", [c for c in codes if _CATEGORY.fullmatch(c)]
    raise UpstreamUnavailable("The safety model's answer is not a verdict.")


def conversation_of(request: ChatCompletionRequest) -> list[Turn]:
    """The user and assistant turns, alternating as classifiers want them: text as a plain
    string, text with images as content parts. Without any such turn, the system text as a
    user turn; nothing at all when there is nothing to read."""
    turns: list[Turn] = []
    system: list[str] = []
    for message in request.messages:
        if isinstance(message, SystemMessage):
            system.extend(_texts(message.content))
        elif isinstance(message, UserMessage | AssistantMessage) and message.content is not None:
            parts = _parts(message.content)
            if parts:
                turns.append({"role": message.role, "content": parts})
    if not turns and any(system):
        turns = [{"role": "user", "content": [_text("\n".join(t for t in system if t))]}]
    return _alternating(turns)


def _alternating(turns: list[Turn]) -> list[Turn]:
    """Consecutive turns of one role merged into one; content given as a string when it is
    text only."""
    merged: list[Turn] = []
    for turn in turns:
        parts = turn["content"] if isinstance(turn["content"], list) else [_text(turn["content"])]
        if merged and merged[-1]["role"] == turn["role"]:
            merged[-1]["content"].extend(parts)
        else:
            merged.append({"role": turn["role"], "content": list(parts)})
    for turn in merged:
        parts = turn["content"]
        if all(part["type"] == "text" for part in parts):
            turn["content"] = "\n".join(part["text"] for part in parts)
    return merged


def _parts(content: str | list[Any]) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [_text(content)] if content else []
    parts: list[dict[str, Any]] = []
    for part in content:
        if isinstance(part, TextPart) and part.text:
            parts.append(_text(part.text))
        elif isinstance(part, ImagePart):
            parts.append(part.model_dump(mode="json", exclude_none=True))
    return parts


def _texts(content: str | list[TextPart]) -> list[str]:
    return [content] if isinstance(content, str) else [part.text for part in content]


def _text(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def answer_text(body: bytes) -> str | None:
    """The first choice's text of a chat.completion, for checking the output."""
    try:
        content = from_json(body)["choices"][0]["message"]["content"]
    except (LookupError, TypeError, ValueError):
        return None
    return content if isinstance(content, str) else None
