"""The validation stage on its own: the body a client sent becomes the normalized request,
or a 400 naming the parameter (see tests/integration/test_parameters.py for every one)."""

from __future__ import annotations

import pytest

from gateway.errors import InvalidRequest
from gateway.stages.validate import parse_chat_request
from tests.conftest import MODEL


def test_a_valid_body_becomes_the_normalized_request() -> None:
    request = parse_chat_request(
        b'{"model": "' + MODEL.encode() + b'", "messages": [{"role": "developer", '
        b'"content": "x"}], "stop": "END", "max_completion_tokens": 5}'
    )

    assert (request.messages[0].role, request.stop, request.max_tokens) == ("system", ["END"], 5)


def test_an_invalid_body_names_the_parameter_and_quotes_nothing() -> None:
    with pytest.raises(InvalidRequest) as refused:
        parse_chat_request(b'{"model": "m", "messages": [{"role": "user", "content": 7}]}')

    assert refused.value.param == "messages[0].content"
    assert "7" not in refused.value.message
