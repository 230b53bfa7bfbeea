"""Every error the gateway answers has exactly the shape `/openapi.json` documents for it
(`ErrorResponse`, OpenAI's): each GatewayError class, with and without param and code."""

from __future__ import annotations

import pytest

from gateway import errors
from gateway.openapi import ErrorResponse


def _error_classes() -> list[type[errors.GatewayError]]:
    found: list[type[errors.GatewayError]] = []
    pending = [errors.GatewayError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending += cls.__subclasses__()
    return found


@pytest.mark.parametrize("cls", _error_classes(), ids=lambda cls: cls.__name__)
def test_every_error_class_answers_the_documented_shape(cls: type[errors.GatewayError]) -> None:
    for error in (cls("A message."), cls("A message.", param="messages[0]", code="a_code")):
        assert ErrorResponse.model_validate_json(error.body_bytes()).model_dump() == error.body()
