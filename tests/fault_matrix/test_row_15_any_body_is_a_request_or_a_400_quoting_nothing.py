"""Row 15, as a property of the validation stage: whatever body a client sends (any bytes,
any JSON value, or an object shaped like a chat request with arbitrary values in its
fields), `parse_chat_request` gives either a valid request in its normalized form or an
`InvalidRequest`: a 400 in OpenAI's error shape whose message and `param` quote none of
the values sent. Never another exception (which would be a 500).

Every string value hypothesis sends carries a marker character that no message of the
gateway contains, so a quoted value is caught wherever it appears; object keys carry none,
as an unknown parameter's name is quoted on purpose (bounded, like OpenAI's)."""

from __future__ import annotations

import json
import string
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gateway.contract import ChatCompletionRequest
from gateway.errors import InvalidRequest
from gateway.openapi import ErrorResponse
from gateway.stages.validate import parse_chat_request

MARKER = "\u2603"  # a snowman: in no message of the gateway
PARAMETERS = sorted(
    alias or name
    for name, alias in ((n, f.alias) for n, f in ChatCompletionRequest.model_fields.items())
)
EXAMPLES = settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)

keys = st.sampled_from(PARAMETERS) | st.text(string.ascii_letters + "_", min_size=1, max_size=8)
marked = st.text(max_size=12).map(lambda text: MARKER + text)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | marked
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=12,
)
# Values a client might plausibly send, often valid (every optional parameter takes null),
# so that accepted requests, and the validators behind the first type check, are reached.
plausible = (
    st.none()
    | st.booleans()
    | st.integers(-3, 130)
    | st.floats(-3, 3)
    | marked
    | st.lists(marked, max_size=2)
    | st.sampled_from(["auto", "none", "hipaa", "low", "truncate", "text", "json_object"])
)
known_roles = st.sampled_from(["system", "developer", "user", "assistant", "tool"])
roles = st.one_of(known_roles, known_roles, known_roles, marked)
parts = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "image_url", "video_url", "audio_url"]) | marked},
    optional={
        "text": marked,
        "image_url": st.fixed_dictionaries({"url": marked | st.just("https://x.test/a.png")}),
    },
)
plain_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "developer", "user"]), "content": marked}
)
any_message = st.fixed_dictionaries(
    {"role": roles},
    optional={
        "content": marked | st.none() | st.lists(parts, max_size=3) | plausible,
        "name": marked,
        "tool_call_id": marked,
        "tool_calls": st.lists(json_values, max_size=2) | plausible,
        "refusal": marked | st.none(),
        "annotations": plausible,
        "parsed": plausible,
    },
)
OPTIONAL = [name for name in PARAMETERS if name not in ("model", "messages")]
request_like = st.builds(
    lambda base, extra: {**base, **extra},
    st.fixed_dictionaries(
        {
            "model": marked | plausible,
            "messages": st.lists(plain_message | any_message, min_size=1, max_size=4) | json_values,
        }
    ),
    # A few parameters at a time: with all of them, nearly every draw has one wrong value.
    st.dictionaries(
        st.sampled_from(OPTIONAL), st.one_of(st.none(), plausible, json_values), max_size=4
    ),
)


def check(body: bytes) -> None:
    try:
        request = parse_chat_request(body)
    except InvalidRequest as error:
        assert error.status == 400
        assert ErrorResponse.model_validate(error.body()).model_dump() == error.body()
        assert error.message
        assert MARKER not in error.message
        assert MARKER not in (error.param or "")
        event("refused")
        return
    event("accepted")
    assert isinstance(request, ChatCompletionRequest)
    # The normalized form is a fixed point: sent again, it is accepted unchanged.
    again = parse_chat_request(request.model_dump_json(by_alias=True, exclude_none=True).encode())
    assert again == request


@EXAMPLES
@given(st.binary(max_size=512))
def test_row_15_any_bytes_are_a_request_or_a_400(body: bytes) -> None:
    check(body)


@EXAMPLES
@given(json_values)
def test_row_15_any_json_value_is_a_request_or_a_400_quoting_nothing(value: Any) -> None:
    check(json.dumps(value).encode())


@EXAMPLES
@given(request_like)
def test_row_15_any_request_shaped_object_is_a_request_or_a_400_quoting_nothing(
    value: dict[str, Any],
) -> None:
    check(json.dumps(value).encode())


@EXAMPLES
@given(request_like, st.data())
def test_row_15_a_request_cut_or_corrupted_anywhere_is_a_400(
    value: dict[str, Any], data: st.DataObject
) -> None:
    body = json.dumps(value, ensure_ascii=False).encode()
    at = data.draw(st.integers(0, len(body)))
    junk = data.draw(st.binary(max_size=3))
    check(body[:at] + junk + body[at + data.draw(st.integers(0, 3)) :])
