"""Key rotation: a team may hold several keys, each optionally with `not_after`. A date
means through that day (UTC): the key works until 23:59:59.999999 and is refused from the
next midnight; a date and time means through that instant. After it the key is refused
with the same 401 as an unknown key, audited and counted as `expired_key`; the other keys
of the team keep working, and a plain hash never expires."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gateway.auth_failures import AuthFailure, AuthFailureLimit
from gateway.config import ConfigError
from gateway.errors import AuthenticationFailed, GatewayError
from gateway.observability.logs import make_logger
from gateway.observability.metrics import GatewayMetrics
from gateway.stages.auth import Authenticator, hash_key
from tests.conftest import TEAM_KEY, an_exchange, auth, config_dict, make_config

OLD_KEY = "gw-rotation-old-key-0000000000000001"
TIMED_KEY = "gw-rotation-timed-key-00000000000002"
DAY = datetime(2031, 3, 31, tzinfo=UTC)
INSTANT = datetime(2031, 3, 31, 12, 30, tzinfo=UTC)


def rotating_config() -> dict[str, Any]:
    raw = config_dict("http://127.0.0.1:9")
    raw["teams"]["team-a"]["key_hashes"] = [
        hash_key(TEAM_KEY),  # the plain form: never expires
        {"hash": hash_key(OLD_KEY), "not_after": DAY.date()},  # as YAML reads 2031-03-31
        {"hash": hash_key(TIMED_KEY), "not_after": "2031-03-31T14:30:00+02:00"},
    ]
    return raw


class Clock:
    def __init__(self) -> None:
        self.now = DAY

    def __call__(self) -> float:
        return self.now.timestamp()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def authenticator(clock: Clock) -> Authenticator:
    config = make_config(rotating_config())
    limit = AuthFailureLimit(config, GatewayMetrics(), make_logger(config.server))
    return Authenticator(config, limit, clock=clock)


def works(authenticator: Authenticator, key: str) -> bool:
    try:
        return authenticator.authenticate(f"Bearer {key}").name == "team-a"
    except AuthenticationFailed:
        return False


def test_a_dated_key_works_through_its_day_and_not_after_it(
    authenticator: Authenticator, clock: Clock
) -> None:
    clock.now = DAY + timedelta(days=1) - timedelta(microseconds=1)
    assert works(authenticator, OLD_KEY)
    clock.now = DAY + timedelta(days=1)
    assert not works(authenticator, OLD_KEY)


def test_a_timed_key_works_through_its_instant_and_not_after_it(
    authenticator: Authenticator, clock: Clock
) -> None:
    clock.now = INSTANT  # 14:30 at +02:00
    assert works(authenticator, TIMED_KEY)
    clock.now = INSTANT + timedelta(microseconds=1)
    assert not works(authenticator, TIMED_KEY)


def test_the_other_keys_of_the_team_keep_working(
    authenticator: Authenticator, clock: Clock
) -> None:
    clock.now = DAY - timedelta(days=1)
    assert [works(authenticator, k) for k in (TEAM_KEY, OLD_KEY, TIMED_KEY)] == [True] * 3
    clock.now = DAY + timedelta(days=3650)
    assert [works(authenticator, k) for k in (TEAM_KEY, OLD_KEY, TIMED_KEY)] == [
        True,
        False,
        False,
    ]


async def test_an_expired_key_gets_the_usual_401_and_is_audited_as_expired(
    authenticator: Authenticator, clock: Clock
) -> None:
    clock.now = DAY + timedelta(days=2)
    unknown = "gw-never-configured-key-000000000009"
    answers = []
    for key in (OLD_KEY, unknown):
        exchange = an_exchange(auth(key))
        with pytest.raises(GatewayError) as refused:
            await authenticator.enter(exchange)
        answers.append((refused.value.status, refused.value.message, exchange.auth_failure))

    (status, message, failure), (unknown_status, unknown_message, _) = answers
    assert status == unknown_status == 401
    assert message == unknown_message
    assert failure == AuthFailure("expired_key", "unknown", hash_key(OLD_KEY)[:8])


@pytest.mark.parametrize("value", ["2031-02-30", "next week", 20310331, True])
def test_a_not_after_that_is_no_date_is_a_config_error_naming_its_path(value: object) -> None:
    raw = rotating_config()
    raw["teams"]["team-a"]["key_hashes"][1]["not_after"] = value

    with pytest.raises(ConfigError) as error:
        make_config(raw)

    assert [p.split(": ", 1)[0] for p in error.value.problems] == [
        "teams.team-a.key_hashes[1].not_after"
    ]


def test_a_quoted_date_is_the_whole_day_as_an_unquoted_one_is() -> None:
    raw = rotating_config()
    raw["teams"]["team-a"]["key_hashes"][1]["not_after"] = "2031-03-31"

    [_, quoted, _] = make_config(raw).teams["team-a"].key_hashes
    [_, unquoted, _] = make_config(rotating_config()).teams["team-a"].key_hashes

    assert quoted.refused_from == unquoted.refused_from == DAY + timedelta(days=1)
