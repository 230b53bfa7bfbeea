"""Row 20: with `rate_limits.redis_url`, every replica counts an address's failures in one
place: failures spread over two gateways add up, the one past the threshold is refused
whichever replica it reaches, and a replica that learns of the block (from that address's
next failure) refuses the address's valid key too. The count is one Redis key with an
expiry, so an address that stops failing leaves nothing behind."""

from __future__ import annotations

from tests.conftest import RedisProcess, RunningUpstream, StartGateway
from tests.fault_matrix.brute_force import THRESHOLD, guarded_config, send, valid


async def test_row_20_two_gateways_on_one_redis_share_the_count(
    start_gateway: StartGateway, upstream: RunningUpstream, redis_server: RedisProcess
) -> None:
    raw = guarded_config(upstream.url, redis_server.url)
    first, second = await start_gateway(raw), await start_gateway(raw)

    statuses = [
        (await send(gateway.url))[0].status
        for gateway in [first, second] * (THRESHOLD // 2) + [first] * (THRESHOLD % 2)
    ]
    over = (await send(second.url))[0]
    ttl_ms = int(redis_server.command("PTTL", "llmgw:authfail:127.0.0.1")[1:].strip())
    learnt = (await send(first.url))[0]
    valid_on_first = await valid(first.url)

    assert statuses == [401] * THRESHOLD
    assert over.status == 429
    assert 55_000 < ttl_ms <= 60_000  # the block, counted down in Redis
    assert (learnt.status, valid_on_first.status) == (429, 429)
    assert redis_server.command("KEYS", "*").decode().split("\r\n")[2::2] == [
        "llmgw:authfail:127.0.0.1"
    ]
