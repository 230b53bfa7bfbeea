"""A Redis Cluster master is killed (SIGKILL) under traffic from three gateway processes and
its replica is promoted: the requests of the team whose keys it served follow the failure
mode, each within the call deadline, until the gateways use the promoted replica, which
each does within one retry interval of the promotion (the documented bound); teams on the
other masters are decided by Redis throughout; afterwards the limits are exact again on
the promoted replica, and every gateway says its limiter is healthy. Nothing hangs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import RedisClusterProcesses, RunningUpstream, wait_for
from tests.integration.redis_cluster_gateways import (
    Answer,
    ask,
    cluster_config,
    gateway_processes,
    teams_on,
)

DEADLINE_S = 0.5  # redis_timeout_ms
RETRY_INTERVAL_S = 0.5  # redis_retry_interval_s: the documented bound for following
SLACK_S = 1.0  # a shared two-core machine: 3 gateways, 6 redis-servers, clients, upstream
PER_MINUTE = 10


async def promoted(cluster: RedisClusterProcesses, replica: int, survivor: int) -> float:
    """When `replica` is seen serving slots as a master (by `survivor`, every 50 ms)."""
    deadline = time.monotonic() + 20
    while replica not in await asyncio.to_thread(cluster.masters, survivor):
        assert time.monotonic() < deadline, "the replica was never promoted"
        await asyncio.sleep(0.05)
    return time.monotonic()


@pytest.mark.parametrize("failure_mode", ["open", "closed"])
async def test_gateways_follow_a_promoted_replica_and_are_exact_again(
    own_redis_cluster: RedisClusterProcesses,
    upstream: RunningUpstream,
    tmp_path: Path,
    failure_mode: str,
) -> None:
    cluster = own_redis_cluster
    by_master = teams_on(cluster, "team", per_master=2)
    victim, survivor, _ = by_master  # master ports
    busy = {port: names[0] for port, names in by_master.items()}  # traffic throughout
    fresh = by_master[victim][1]  # first used after the failover
    teams = {team: {"requests_per_minute": 1_000_000} for team in busy.values()}
    teams[fresh] = {"requests_per_minute": PER_MINUTE}
    raw = cluster_config(
        upstream.url,
        cluster.url,
        teams,
        failure_mode=failure_mode,
        redis_timeout_ms=DEADLINE_S * 1000,
        redis_retry_interval_s=RETRY_INTERVAL_S,
        # Every admission a Redis call: this test is about how they follow a failover.
        # (With budget slices a live slice admits without Redis until it expires: see
        # tests/integration/test_budget_slices.py.)
        slices=False,
    )
    replica = cluster.replica_of(victim)
    answers: list[tuple[int, str, Answer]] = []  # gateway, team, answer
    stop = asyncio.Event()

    def seen(condition: Callable[[int, str, Answer], bool]) -> Callable[[], bool]:
        """Every gateway has an answer for the victim's team that meets `condition`."""
        return lambda: all(
            any(g == i and t == busy[victim] and condition(g, t, a) for g, t, a in answers)
            for i in range(3)
        )

    async with gateway_processes(tmp_path, raw) as gateways, aiohttp.ClientSession() as session:
        urls = [gateway.url for gateway in gateways]

        async def traffic(g: int, team: str) -> None:
            while not stop.is_set():
                answers.append((g, team, await ask(session, urls[g], team)))
                await asyncio.sleep(0.02)

        workers = [asyncio.create_task(traffic(g, t)) for g in range(3) for t in busy.values()]
        await wait_for(seen(lambda g, t, a: a.decided), 15)
        killed = time.monotonic()
        cluster.node(victim).kill()
        promoted_at = await promoted(cluster, replica, survivor)
        await wait_for(seen(lambda g, t, a: a.decided and a.sent > promoted_at), 10)
        stop.set()
        await asyncio.gather(*workers)

        burst = await asyncio.gather(*(ask(session, urls[i % 3], fresh) for i in range(60)))
        ready = []
        for url in urls:
            async with session.get(f"{url}/readyz") as resp:
                ready.append((await resp.json())["rate_limiter"])
        alive = [gateway.alive() for gateway in gateways]

    after_kill = [(g, t, a) for g, t, a in answers if a.sent > killed + 0.05]
    victims = [a for g, t, a in after_kill if t == busy[victim]]
    others = [a for g, t, a in after_kill if t != busy[victim]]
    failure = (200, None) if failure_mode == "open" else (503, "rate_limiter_unavailable")

    # Nothing hung: every answer came within the deadline (and a loaded machine's slack).
    assert max(a.latency for _, _, a in answers) < DEADLINE_S + SLACK_S
    # Until a gateway could follow, the victim team's requests got the failure mode. The
    # outage ends with the first answer the promoted replica gave (the test's own poll sees
    # the promotion up to a poll and a thread hop later, and a gateway may be quicker).
    followed = min(a.sent for a in victims if a.decided)
    outage = [a for a in victims if a.sent + a.latency < followed]
    assert len(outage) >= 3 * 5, len(outage)  # the failover took seconds: traffic saw it
    assert {(a.status, a.code, a.decided) for a in outage} == {(*failure, False)}
    assert {(a.status, a.decided) for a in victims if a.decided} == {(200, True)}
    # Each gateway followed the promoted replica within one retry interval of its promotion.
    for i in range(3):
        first = min(
            a.sent + a.latency
            for g, t, a in after_kill
            if g == i and t == busy[victim] and a.decided and a.sent > promoted_at
        )
        assert first - promoted_at < RETRY_INTERVAL_S + SLACK_S, (i, first - promoted_at)
    # Teams on the other masters were decided by Redis all along (but for a loaded
    # machine's rare missed deadline).
    assert len(others) > 2 * len(outage) // 3
    assert sum(not a.decided for a in others) <= len(others) // 20, others
    # Exact again, on the promoted replica, across the three gateways.
    assert all(a.decided for a in burst)
    statuses = [a.status for a in burst]
    assert (statuses.count(200), statuses.count(429)) == (PER_MINUTE, 60 - PER_MINUTE)
    assert cluster.node(replica).command("EXISTS", f"llmgw:{{{fresh}}}:rpm") == b":1\r\n"
    assert ready == ["redis"] * 3
    assert alive == [True] * 3
