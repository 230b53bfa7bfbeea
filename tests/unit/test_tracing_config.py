"""`tracing:` in the configuration: off unless an OTLP/HTTP endpoint is given; export
headers come from an environment variable in OTEL_EXPORTER_OTLP_HEADERS' format, and a
malformed one is named by position, never quoted (it holds secrets); the sample ratio is a
share."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config import ConfigError, parse_config
from tests.conftest import UPSTREAM_KEY, UPSTREAM_KEY_ENV, config_dict, unit_config


def with_tracing(environ: dict[str, str] | None = None, **tracing: Any) -> Any:
    raw = config_dict("http://127.0.0.1:9")
    raw["tracing"] = tracing
    return parse_config(raw, environ={UPSTREAM_KEY_ENV: UPSTREAM_KEY, **(environ or {})})


def test_tracing_is_off_by_default() -> None:
    assert unit_config().tracing.endpoint is None


def test_export_headers_are_read_from_the_named_variable_and_decoded() -> None:
    config = with_tracing(
        {"OTLP_HEADERS": "x-api-key=s3cr%3Dt, x-tenant = team%20a"},
        endpoint="https://collector.example:4318",
        headers_env="OTLP_HEADERS",
    )

    assert config.tracing.export_headers() == {"x-api-key": "s3cr=t", "x-tenant": "team a"}
    assert "s3cr" not in repr(config.tracing)


def test_a_header_value_with_a_line_break_is_refused_not_quoted() -> None:
    # Decoded, it would make every export's request invalid: every span lost, silently.
    with pytest.raises(ConfigError) as refused:
        with_tracing(
            {"OTLP_HEADERS": "x-api-key=s3cret%0D%0Ax-evil: 1"},
            endpoint="http://127.0.0.1:4318",
            headers_env="OTLP_HEADERS",
        )

    assert refused.value.problems == [
        "tracing.headers_env: OTLP_HEADERS: entry 1 has a control character"
    ]
    assert "s3cret" not in str(refused.value)


def test_a_malformed_header_entry_is_named_by_position_and_not_quoted() -> None:
    with pytest.raises(ConfigError) as refused:
        with_tracing(
            {"OTLP_HEADERS": "x-api-key=fine,not-a-pair-s3cret"},
            endpoint="http://127.0.0.1:4318",
            headers_env="OTLP_HEADERS",
        )

    assert refused.value.problems == [
        "tracing.headers_env: OTLP_HEADERS: entry 2 is not name=value"
    ]
    assert "s3cret" not in str(refused.value)


@pytest.mark.parametrize(
    ("tracing", "field"),
    [
        ({"endpoint": "collector:4318"}, "tracing.endpoint"),
        ({"endpoint": "http://127.0.0.1:4318", "sample_ratio": 1.5}, "tracing.sample_ratio"),
        ({"endpoint": "http://127.0.0.1:4318", "export_delay_ms": 1}, "tracing.export_delay_ms"),
        (
            {"endpoint": "http://127.0.0.1:4318", "headers_env": "UNSET_VARIABLE"},
            "tracing.headers_env",
        ),
    ],
)
def test_bad_tracing_settings_are_named(tracing: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as refused:
        with_tracing(**tracing)

    assert [problem.split(":")[0] for problem in refused.value.problems] == [field]
