"""The operator hears of expiring keys: at start-up and at each reload (each `watch`), a
warning for every key that expires within 7 days; when a key expires, one
`team_key_expired` line, once per process however many reloads follow (a key that
expired while nobody watched is logged at the next watch). Lines name the team and the
key's fingerprint, never the key."""

from __future__ import annotations

import io
import json
import time
from typing import Any

from gateway.observability.logs import make_logger
from gateway.stages.auth import hash_key
from gateway.teams import EXPIRY_WARNING_S, KeyExpiryLog, Team, TeamKey
from tests.conftest import unit_config, wait_for

KEY = "gw-expiring-key-00000000000000000001"


def key(refused_in_s: float | None, secret: str = KEY) -> TeamKey:
    return TeamKey(
        team=Team("team-a"),
        digest=bytes.fromhex(hash_key(secret)),
        refused_from=None if refused_in_s is None else time.time() + refused_in_s,
        not_after="(as configured)",
    )


class Log:
    def __init__(self) -> None:
        self.stream = io.StringIO()
        self.logger = make_logger(unit_config().server, self.stream)

    def lines(self, event: str) -> list[dict[str, Any]]:
        records = [json.loads(line) for line in self.stream.getvalue().splitlines()]
        return [r for r in records if r["event"] == event]


async def test_a_key_expiring_soon_is_warned_of_at_each_watch_and_not_later_ones() -> None:
    log = Log()
    expiry = KeyExpiryLog(log.logger)
    soon, later = key(3 * 24 * 3600.0), key(EXPIRY_WARNING_S + 3600, "gw-other-key-0000001")

    expiry.watch([soon, later, key(None, "gw-plain-key-000000001")])
    expiry.watch([soon, later])  # a reload
    expiry.close()

    warned = log.lines("team_key_expiring")
    assert [(w["team"], w["key_fingerprint"]) for w in warned] == [
        ("team-a", hash_key(KEY)[:8])
    ] * 2
    assert 3 * 24 * 3600 - 60 <= warned[0]["expires_in_s"] <= 3 * 24 * 3600
    assert KEY not in log.stream.getvalue()


async def test_an_expiry_is_logged_when_it_happens_and_only_once() -> None:
    log = Log()
    expiry = KeyExpiryLog(log.logger)
    expiring = key(0.2)

    expiry.watch([expiring])
    assert log.lines("team_key_expired") == []
    await wait_for(lambda: log.lines("team_key_expired"), seconds=10)
    expiry.watch([expiring])  # reloads after it
    expiry.watch([expiring])
    expiry.close()

    [expired] = log.lines("team_key_expired")
    assert (expired["team"], expired["key_fingerprint"]) == ("team-a", hash_key(KEY)[:8])


async def test_a_key_that_expired_unwatched_is_logged_at_the_next_watch() -> None:
    log = Log()
    expiry = KeyExpiryLog(log.logger)

    expiry.watch([key(-3600.0)])
    expiry.watch([key(-3600.0)])
    expiry.close()

    assert len(log.lines("team_key_expired")) == 1
    assert log.lines("team_key_expiring") == []
