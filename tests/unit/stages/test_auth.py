"""Authentication: `Authorization: Bearer <key>` gives the team that owns the key; every
failure raises the same error, which never contains the presented key, and the stored
digest is compared in constant time. The stage records each refusal (why, from where, the
key's fingerprint) and counts it, refusing with 429 past the limit."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

import pytest

from gateway.auth_failures import AuthFailure, AuthFailureLimit
from gateway.errors import AuthenticationFailed, GatewayError
from gateway.observability.logs import make_logger
from gateway.observability.metrics import GatewayMetrics
from gateway.stages.auth import Authenticator, fingerprint, hash_key, presented_digest
from tests.conftest import (
    OTHER_TEAM_KEY,
    TEAM_KEY,
    an_exchange,
    auth,
    config_dict,
    make_config,
    unit_config,
)

UNKNOWN_KEY = "gw-not-a-key-of-any-team-0000000000"


@pytest.fixture
def authenticator() -> Authenticator:
    config = make_config(config_dict("http://127.0.0.1:9"))
    return Authenticator(
        config, AuthFailureLimit(config, GatewayMetrics(), make_logger(config.server))
    )


def denial(authenticator: Authenticator, authorization: str | None) -> AuthenticationFailed:
    with pytest.raises(AuthenticationFailed) as caught:
        authenticator.authenticate(authorization)
    return caught.value


def test_valid_bearer_key_returns_its_team(authenticator: Authenticator) -> None:
    assert authenticator.authenticate(f"Bearer {TEAM_KEY}").name == "team-a"
    assert authenticator.authenticate(f"Bearer {OTHER_TEAM_KEY}").name == "team-b"


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "BeArEr"])
def test_scheme_is_case_insensitive(authenticator: Authenticator, scheme: str) -> None:
    assert authenticator.authenticate(f"{scheme} {TEAM_KEY}").name == "team-a"


REFUSED = {
    "missing header": None,
    "empty header": "",
    "wrong scheme": f"Basic {TEAM_KEY}",
    "scheme without key": "Bearer",
    "empty key": "Bearer ",
    "blank key": "Bearer    ",
    "unknown key": f"Bearer {UNKNOWN_KEY}",
    "key without scheme": TEAM_KEY,
    "over-long header": f"Bearer {TEAM_KEY}{'x' * 600}",
    "non-ascii key": "Bearer gw-clé-ünïcödé-🔑",
    "undecodable header byte": "Bearer gw-\udcff-key",
}


@pytest.mark.parametrize("authorization", REFUSED.values(), ids=REFUSED.keys())
def test_every_failure_raises_the_same_error_without_the_key(
    authenticator: Authenticator, authorization: str | None
) -> None:
    error = denial(authenticator, authorization)

    assert error.status == 401
    assert error.body() == denial(authenticator, f"Bearer {UNKNOWN_KEY}").body()
    if authorization:
        presented = authorization.removeprefix("Bearer").removeprefix("Basic").strip()
        if presented:
            assert presented not in error.message
            assert presented not in str(error.body())


def test_over_long_header_with_a_valid_key_is_refused(authenticator: Authenticator) -> None:
    padded = f"Bearer {TEAM_KEY}" + " " * 600

    assert denial(authenticator, padded).body() == denial(authenticator, None).body()


def test_stored_digest_is_compared_with_hmac_compare_digest(
    authenticator: Authenticator, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real: Callable[[bytes, bytes], bool] = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)

    assert authenticator.authenticate(f"Bearer {TEAM_KEY}").name == "team-a"
    assert len(calls) == 1


def test_the_fingerprint_is_the_start_of_the_keys_configured_hash() -> None:
    assert fingerprint(presented_digest(f"Bearer {UNKNOWN_KEY}")) == hash_key(UNKNOWN_KEY)[:8]
    assert fingerprint(presented_digest(f"bearer   {UNKNOWN_KEY}  ")) == hash_key(UNKNOWN_KEY)[:8]
    for no_key in (None, "", "Bearer ", f"Basic {UNKNOWN_KEY}", f"Bearer {'k' * 600}"):
        assert fingerprint(presented_digest(no_key)) is None


async def test_the_stage_records_each_refusal_and_blocks_past_the_limit() -> None:
    def small_limit(raw: dict[str, Any]) -> None:
        raw["auth_failures"] = {"max_failures": 2}

    config = unit_config(small_limit)
    failures = AuthFailureLimit(config, GatewayMetrics(), make_logger(config.server))
    stage = Authenticator(config, failures)
    refusals: list[tuple[int, AuthFailure | None]] = []
    for headers in ({}, auth(UNKNOWN_KEY), auth(UNKNOWN_KEY), auth(TEAM_KEY)):
        exchange = an_exchange(headers)
        with pytest.raises(GatewayError) as refused:
            await stage.enter(exchange)
        refusals.append((refused.value.status, exchange.auth_failure))

    digest = hash_key(UNKNOWN_KEY)[:8]
    assert refusals == [
        (401, AuthFailure("missing", "unknown", None)),
        (401, AuthFailure("unknown_key", "unknown", digest)),
        (429, AuthFailure("unknown_key", "unknown", digest)),
        (429, AuthFailure("blocked", "unknown", hash_key(TEAM_KEY)[:8])),
    ]
