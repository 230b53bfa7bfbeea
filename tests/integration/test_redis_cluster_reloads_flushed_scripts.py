"""On a Redis Cluster, a master that lost its scripts (SCRIPT FLUSH; a restarted or newly
promoted node has none either) answers NOSCRIPT, and the limiter loads the script there
within the same call: no request falls back to the failure mode, and the limits stay
exact, for teams on every master."""

from __future__ import annotations

import aiohttp

from tests.conftest import RedisClusterProcesses, RunningUpstream, StartGateway
from tests.integration.redis_cluster_gateways import ask, cluster_config, teams_on

PER_MINUTE = 3


async def test_admissions_load_the_script_again_on_each_master(
    start_gateway: StartGateway, upstream: RunningUpstream, redis_cluster: RedisClusterProcesses
) -> None:
    teams = [names[0] for names in teams_on(redis_cluster, "flushed").values()]
    raw = cluster_config(
        upstream.url,
        redis_cluster.url,
        {team: {"requests_per_minute": PER_MINUTE} for team in teams},
        failure_mode="closed",
        redis_timeout_ms=1000,
    )
    gateway = await start_gateway(raw)

    async with aiohttp.ClientSession() as session:
        first = [await ask(session, gateway.url, team) for team in teams]
        for port in redis_cluster.masters():
            assert redis_cluster.node(port).command("SCRIPT", "FLUSH").startswith(b"+OK")
        rest = [
            [await ask(session, gateway.url, team) for _ in range(PER_MINUTE)] for team in teams
        ]

    assert [a.status for a in first] == [200] * 3
    for answers in rest:  # decided by Redis (failure_mode closed would have been 503)
        assert [a.status for a in answers] == [200] * (PER_MINUTE - 1) + [429]
    assert gateway.log_records("rate_limiter_unavailable") == []
