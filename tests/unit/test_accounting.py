"""Token accounting: the reservation estimate, and the usage charged when none is reported."""

from __future__ import annotations

import json
from typing import Any

from gateway.accounting import (
    Usage,
    actual_usage,
    estimate_prompt_tokens,
    reserved_tokens,
)
from gateway.stages.validate import parse_chat_request


def request(**params: Any) -> Any:
    body = {"model": "m", "messages": [{"role": "user", "content": "x" * 40}], **params}
    return parse_chat_request(json.dumps(body).encode())


def test_prompt_estimate_is_a_token_per_four_characters_plus_framing() -> None:
    assert estimate_prompt_tokens(request()) == 4 + 10
    image = {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}
    multimodal = request(
        messages=[{"role": "user", "content": [{"type": "text", "text": "abcd"}, image]}]
    )
    assert estimate_prompt_tokens(multimodal) == 4 + 1 + 85


def test_reservation_covers_every_completion_the_request_may_generate() -> None:
    assert reserved_tokens(request(max_tokens=100, n=3), 14, 1024) == 14 + 300
    assert reserved_tokens(request(), 14, 1024) == 14 + 1024


def test_reported_usage_wins_and_relayed_events_count_otherwise() -> None:
    assert actual_usage(Usage(7, 9), 100, 50) == Usage(7, 9)
    assert actual_usage(None, 100, 12) == Usage(100, 12)
    assert actual_usage(None, 100, 0) == Usage(0, 0)  # nothing came back: nothing charged
