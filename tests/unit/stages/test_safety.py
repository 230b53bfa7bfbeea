"""The safety stages on their own: what a classifier is sent of a conversation (text and
images, alternating turns; system text only when there is nothing else), and when no
classifier is asked at all."""

from __future__ import annotations

from typing import Any

from gateway.stages.safety import conversation_of, parse_verdict
from tests.conftest import a_request

IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}


def conversation(*messages: dict[str, Any]) -> list[dict[str, Any]]:
    return conversation_of(a_request(messages=list(messages)))


def test_text_turns_are_plain_strings_and_consecutive_turns_of_a_role_merge() -> None:
    assert conversation(
        {"role": "system", "content": "be kind"},
        {"role": "user", "content": "a"},
        {"role": "user", "content": [{"type": "text", "text": "b"}]},
        {"role": "assistant", "content": "c"},
    ) == [{"role": "user", "content": "a\nb"}, {"role": "assistant", "content": "c"}]


def test_images_are_sent_as_content_parts_and_other_media_is_not() -> None:
    video = {"type": "video_url", "video_url": {"url": "https://v.test/a.mp4"}}

    assert conversation({"role": "user", "content": [video, IMAGE]}) == [
        {"role": "user", "content": [IMAGE]}
    ]


def test_system_text_stands_in_only_when_there_is_no_other_turn() -> None:
    assert conversation({"role": "system", "content": "s"}) == [{"role": "user", "content": "s"}]
    assert conversation({"role": "system", "content": ""}, {"role": "user", "content": ""}) == []


def test_llama_guard_verdicts_keep_only_category_codes() -> None:
    answer = {"choices": [{"message": {"content": "unsafe\nS1, S10, patient Jane"}}]}

    assert parse_verdict(answer) == ("unsafe", ["S1", "S10"])
    assert parse_verdict({"choices": [{"message": {"content": " safe "}}]}) == ("safe", [])
