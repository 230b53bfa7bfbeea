"""Row 20: the audit line of a refused authentication says why (`auth_failure`), from
where (`client_address`) and with which key (`key_fingerprint`: the first 8 hex digits of
the presented key's SHA-256, the hash the config's key_hashes hold; null when no key was
presented), so an alert can name the address and an operator can recognise a revoked key
still in use. The key itself appears in no log line. A request that authenticated carries
none of the three."""

from __future__ import annotations

import aiohttp

from gateway.stages.auth import hash_key
from tests.conftest import TEAM_KEY, RunningUpstream, StartGateway
from tests.fault_matrix.brute_force import (
    OTHER_SOURCE,
    THRESHOLD,
    WRONG_KEY,
    guarded_config,
    send,
    valid,
)


def fields(record: dict[str, object]) -> tuple[object, ...]:
    return (
        record["status"],
        record["auth_failure"],
        record["client_address"],
        record["key_fingerprint"],
    )


async def test_row_20_refused_authentications_are_audited_with_address_and_fingerprint(
    start_gateway: StartGateway, upstream: RunningUpstream
) -> None:
    gateway = await start_gateway(guarded_config(upstream.url))

    await valid(gateway.url)
    await send(gateway.url, key=None)
    await send(gateway.url, headers={"Authorization": f"Basic {WRONG_KEY}"})
    await send(gateway.url, THRESHOLD + 1, source=OTHER_SOURCE)  # the last one blocks
    await valid(gateway.url, source=OTHER_SOURCE)

    wrong, right = hash_key(WRONG_KEY)[:8], hash_key(TEAM_KEY)[:8]
    assert [fields(record) for record in gateway.log_records("audit")] == [
        (200, None, None, None),
        (401, "missing", "127.0.0.1", None),
        (401, "malformed", "127.0.0.1", None),
        *[(401, "unknown_key", OTHER_SOURCE, wrong)] * THRESHOLD,
        (429, "unknown_key", OTHER_SOURCE, wrong),
        (429, "blocked", OTHER_SOURCE, right),
    ]
    assert WRONG_KEY not in gateway.log_text()
    assert TEAM_KEY not in gateway.log_text()
    blocks = gateway.log_records("auth_address_blocked")
    assert [(b["client_address"], b["failures"]) for b in blocks] == [(OTHER_SOURCE, THRESHOLD + 1)]


async def test_row_20_the_models_endpoint_audits_its_refusals_too(
    start_gateway: StartGateway, upstream: RunningUpstream
) -> None:
    gateway = await start_gateway(guarded_config(upstream.url))

    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{gateway.url}/v1/models", headers={"Authorization": f"Bearer {WRONG_KEY}"}
        ) as resp,
    ):
        assert resp.status == 401

    [record] = gateway.log_records("audit")
    assert fields(record) == (401, "unknown_key", "127.0.0.1", hash_key(WRONG_KEY)[:8])
