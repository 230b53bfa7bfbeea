"""With prices (`models.<name>.price`), each row has a cost: its prompt and completion
tokens per model times that model's price per million, summed exactly (decimal, not
binary fractions) and rounded to millionths. A row with no priced model has no cost (null,
not 0: unknown is not free); the tokens of unpriced models are counted apart. Without
prices there are no cost columns at all."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from gateway.config import ModelPrice
from gateway.usage.report import prices_of
from tests.conftest import MODEL, OPENAI_MODEL, OTHER_TEAM_MODEL, unit_config
from tests.unit.usage.lines import audit_line, report_of, rows_of

PRICES = {
    MODEL: ModelPrice(input_per_million=0.1, output_per_million=0.3),
    OPENAI_MODEL: ModelPrice(input_per_million=0.15, output_per_million=0.6),
}
MILLION = 1_000_000


def test_cost_is_tokens_times_price_summed_exactly(tmp_path: Path) -> None:
    # In binary floating point 0.1 + 0.1 + 0.1 is 0.30000000000000004.
    lines = [audit_line(model=MODEL, prompt_tokens=MILLION, completion_tokens=0)] * 3
    lines += [audit_line(model=MODEL, prompt_tokens=0, completion_tokens=MILLION)]

    [row, total] = rows_of(report_of(tmp_path / "audit.jsonl", *lines, by="model"), PRICES)

    assert row["cost"] == total["cost"] == Decimal("0.600000")
    assert row["unpriced_tokens"] == 0


def test_cost_is_rounded_to_millionths_after_summing(tmp_path: Path) -> None:
    # 0.1 per million is 0.0000001 per token: each line alone would round to 0.
    lines = [audit_line(model=MODEL, prompt_tokens=5, completion_tokens=0)] * 3

    [row, _] = rows_of(report_of(tmp_path / "audit.jsonl", *lines, by="model"), PRICES)

    assert row["cost"] == Decimal("0.000002")  # 0.0000015, half to even


def test_a_model_without_a_price_has_no_cost_and_its_tokens_counted_apart(
    tmp_path: Path,
) -> None:
    lines = [
        audit_line(model=OTHER_TEAM_MODEL, prompt_tokens=100, completion_tokens=20),
        audit_line(
            model=MODEL,
            status=429,
            error_code="rate_limit_exceeded",
            prompt_tokens=None,
            completion_tokens=None,
        ),
        audit_line(
            team=None,
            model=None,
            status=401,
            error_code="invalid_api_key",
            prompt_tokens=None,
            completion_tokens=None,
        ),
    ]

    rows = rows_of(report_of(tmp_path / "audit.jsonl", *lines, by="model"), PRICES)

    assert [(row.get("model", "(total)"), row["cost"], row["unpriced_tokens"]) for row in rows] == [
        (MODEL, Decimal("0.000000"), 0),  # priced, asked for, nothing used: free indeed
        (OTHER_TEAM_MODEL, None, 120),
        (None, None, 0),
        ("(total)", Decimal("0.000000"), 120),
    ]


def test_a_team_row_costs_its_priced_models_and_counts_the_others(tmp_path: Path) -> None:
    lines = [
        audit_line(model=MODEL, prompt_tokens=2 * MILLION, completion_tokens=MILLION),
        audit_line(model=OPENAI_MODEL, prompt_tokens=MILLION, completion_tokens=MILLION),
        audit_line(model=OTHER_TEAM_MODEL, prompt_tokens=300, completion_tokens=4),
    ]

    [row, _] = rows_of(report_of(tmp_path / "audit.jsonl", *lines, by="team"), PRICES)

    assert row["cost"] == Decimal("0.2") + Decimal("0.3") + Decimal("0.15") + Decimal("0.6")
    assert row["unpriced_tokens"] == 304


def test_without_prices_there_are_no_cost_columns(tmp_path: Path) -> None:
    [row, total] = rows_of(report_of(tmp_path / "audit.jsonl", audit_line()))

    assert "cost" not in row and "unpriced_tokens" not in row
    assert "cost" not in total


def test_prices_are_read_from_the_configuration_by_public_model_name() -> None:
    def priced(raw: dict[str, dict[str, dict[str, object]]]) -> None:
        raw["models"][MODEL]["price"] = {"input_per_million": 0.05, "output_per_million": 0.08}

    assert prices_of(unit_config(priced)) == {
        MODEL: ModelPrice(input_per_million=0.05, output_per_million=0.08)
    }
    assert prices_of(unit_config()) == {}
