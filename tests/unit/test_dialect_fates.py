"""Every contract parameter has a defined fate in every dialect, and docs/dialects.md
lists exactly those fates."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.contract import ChatCompletionRequest
from gateway.dialects import DIALECTS
from gateway.dialects.base import CONTRACT_PARAMETERS, Fate
from gateway.dialects.fates import BEGIN, END, render

DOC = Path(__file__).resolve().parents[2] / "docs" / "dialects.md"
# Accepted from OpenAI clients and folded into contract parameters by normalization.
NORMALIZED_AWAY = {"max_completion_tokens", "top_logprobs"}


def test_contract_parameters_are_every_request_field() -> None:
    assert set(CONTRACT_PARAMETERS) == set(ChatCompletionRequest.model_fields) - NORMALIZED_AWAY


@pytest.mark.parametrize("dialect", sorted(DIALECTS))
def test_every_parameter_has_a_fate(dialect: str) -> None:
    fates = DIALECTS[dialect].fates

    assert set(fates) == set(CONTRACT_PARAMETERS)
    assert all(isinstance(fate, Fate) for fate in fates.values())


def test_the_documented_table_is_the_code() -> None:
    text = DOC.read_text()
    documented = text[text.index(BEGIN) + len(BEGIN) : text.index(END)].strip()

    assert documented == render(), "regenerate with: python -m gateway.dialects.fates"
