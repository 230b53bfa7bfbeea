"""Safety stage: asking a safety model (Llama Guard's format) whether a request, and by
policy a non-streamed answer, is safe, for upstreams that do not do it natively.

The safety model is an ordinary configured model with its own upstreams, called through
the same upstream stage (balancing, retries, and, for a request under HIPAA, only
HIPAA-eligible upstreams). It is sent the conversation's user and assistant turns; its
answer is `safe`, or `unsafe` and a line of violated categories (`S1,S10`). An unsafe
verdict is a 400 `content_policy_violation` naming the categories, and the generation
upstream never receives the request. A safety model that cannot answer refuses the
request (503) or lets it proceed, as the policy says; proceeding is counted.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic_core import from_json

from gateway.context import RequestContext
from gateway.contract import AssistantMessage, ChatCompletionRequest, TextPart, UserMessage
from gateway.errors import ContentPolicyViolation, GatewayError, UpstreamUnavailable
from gateway.observability.metrics import GatewayMetrics
from gateway.policies import SafetyPolicy
from gateway.routing import CallRecord
from gateway.stages.route import Router
from gateway.stages.translate import translate
from gateway.upstream.caller import UpstreamCaller
from gateway.upstream.client import JsonAnswer

_CATEGORY = re.compile(r"S\d{1,2}")


class SafetyStage:
    def __init__(self, router: Router, caller: UpstreamCaller, metrics: GatewayMetrics) -> None:
        self._router = router
        self._caller = caller
        self._metrics = metrics

    async def check(
        self,
        safety_model: str,
        policy: SafetyPolicy | None,
        conversation: list[dict[str, str]],
        ctx: RequestContext,
    ) -> None:
        """Raises ContentPolicyViolation for an unsafe verdict; records the verdict."""
        try:
            verdict, categories = await self._classify(safety_model, conversation, ctx)
        except GatewayError:
            ctx.safety_verdict = "unavailable"
            self._metrics.safety_verdicts.labels(model=safety_model, verdict="unavailable").inc()
            if policy is not None and policy.on_unavailable == "proceed":
                return
            raise UpstreamUnavailable(
                "The safety model could not classify the request, and this team's policy "
                "refuses unclassified requests.",
                code="safety_model_unavailable",
            ) from None
        ctx.safety_verdict = verdict
        self._metrics.safety_verdicts.labels(model=safety_model, verdict=verdict).inc()
        if verdict == "unsafe":
            listed = ", ".join(categories) or "unspecified"
            raise ContentPolicyViolation(
                f"The safety model classified this content as unsafe (categories: {listed})."
            )

    async def check_answer(
        self,
        safety_model: str,
        policy: SafetyPolicy,
        conversation: list[dict[str, str]],
        answer: bytes,
        ctx: RequestContext,
    ) -> None:
        """The same check on a whole answer, as the conversation's last turn."""
        text = answer_text(answer)
        if text:
            said = [*conversation, {"role": "assistant", "content": text}]
            await self.check(safety_model, policy, said, ctx)

    async def _classify(
        self, safety_model: str, conversation: list[dict[str, str]], ctx: RequestContext
    ) -> tuple[str, list[str]]:
        route = self._router.route(safety_model)
        if ctx.hipaa:
            if route.hipaa is None:
                raise UpstreamUnavailable("The safety model has no HIPAA-eligible upstream.")
            route = route.hipaa
        request = ChatCompletionRequest.model_validate(
            {"model": safety_model, "messages": conversation, "max_tokens": 20, "temperature": 0}
        )
        # The classification is its own call: its attempts must not overwrite the
        # request's own upstream in the audit line.
        answer = await self._caller.call(
            route, translate(route, request), False, ctx.request_id, CallRecord()
        )
        assert isinstance(answer, JsonAnswer)
        return parse_verdict(from_json(answer.body))


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


def conversation_of(request: ChatCompletionRequest) -> list[dict[str, str]]:
    """The user and assistant turns as plain text, the form safety classifiers take."""
    turns: list[dict[str, str]] = []
    for message in request.messages:
        if not isinstance(message, UserMessage | AssistantMessage) or message.content is None:
            continue
        content = message.content
        text = (
            content
            if isinstance(content, str)
            else " ".join(part.text for part in content if isinstance(part, TextPart))
        )
        if not text:
            continue
        if turns and turns[-1]["role"] == message.role:  # classifiers want turns to alternate
            turns[-1]["content"] += "\n" + text
        else:
            turns.append({"role": message.role, "content": text})
    return turns


def answer_text(body: bytes) -> str | None:
    """The first choice's text of a chat.completion, for checking the output."""
    try:
        content = from_json(body)["choices"][0]["message"]["content"]
    except (LookupError, TypeError, ValueError):
        return None
    return content if isinstance(content, str) else None
