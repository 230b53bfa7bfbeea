"""On a Redis Cluster (three masters, a replica each), three gateway processes share every
team's budget exactly, for teams whose keys live on different masters: of 60 simultaneous
requests per team spread over the three, exactly the limit is admitted; and a request's
real token usage, settled by one gateway, is what the next admission on another gateway is
decided against. Each team's keys are on the master that serves its hash tag's slot."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from gateway.testing.fake_upstream import Behavior
from tests.conftest import RedisClusterProcesses, RunningUpstream, chat_body
from tests.integration.redis_cluster_gateways import (
    ask,
    cluster_config,
    gateway_processes,
    teams_on,
)

PER_MINUTE = 10
TOKENS_PER_MINUTE = 1000
USED = 900  # every answer's real usage
RESERVED = 4 + 1 + 5  # what a request for "hi" with max_tokens 5 reserves
REFILL_PER_S = TOKENS_PER_MINUTE / 60


async def test_three_gateways_share_each_teams_budget_exactly_on_a_cluster(
    redis_cluster: RedisClusterProcesses, upstream: RunningUpstream, tmp_path: Path
) -> None:
    rpm = teams_on(redis_cluster, "rpm")  # master port -> [team]
    tpm = teams_on(redis_cluster, "tpm")
    teams = {team[0]: {"requests_per_minute": PER_MINUTE} for team in rpm.values()}
    teams |= {team[0]: {"tokens_per_minute": TOKENS_PER_MINUTE} for team in tpm.values()}
    # A generous deadline: three gateways, their clients, six redis-servers and the upstream
    # share two cores here, and this is about exactness, not the failure mode.
    raw = cluster_config(upstream.url, redis_cluster.url, teams, redis_timeout_ms=2000)
    async with gateway_processes(tmp_path, raw) as gateways:
        urls = [gateway.url for gateway in gateways]
        upstream.state.default = Behavior(usage_total=USED)

        async with aiohttp.ClientSession() as session:
            # Requests per minute: 60 at once per team, three teams (one per master) at once.
            order = [team for (team,) in rpm.values() for _ in range(60)]
            burst = await asyncio.gather(
                *(ask(session, urls[i % 3], team) for i, team in enumerate(order))
            )
            # Tokens per minute: one request on each gateway in turn, each after the previous
            # answer and the settle delay (5 ms, plus a round trip: far more allowed here).
            settled = {}
            body = chat_body(max_tokens=5, messages=[{"role": "user", "content": "hi"}])
            for team in (names[0] for names in tpm.values()):
                answers = []
                for url in urls:
                    answers.append(await ask(session, url, team, body))
                    await asyncio.sleep(0.3)
                settled[team] = answers
        unavailable = [g.records("rate_limiter_unavailable") for g in gateways]

    assert unavailable == [[], [], []]  # every decision was Redis's
    assert all(answer.decided for answer in burst)
    for port, (team,) in rpm.items():
        mine = [a.status for a, t in zip(burst, order, strict=True) if t == team]
        assert (mine.count(200), mine.count(429)) == (PER_MINUTE, 60 - PER_MINUTE), (team, mine)
        # Its keys are on the master serving its slot, not all on one node.
        assert redis_cluster.node(port).command("EXISTS", f"llmgw:{{{team}}}:rpm") == b":1\r\n"
    for team, (first, second, third) in settled.items():
        elapsed = third.sent - first.sent + third.latency
        left = int(second.headers["x-ratelimit-remaining-tokens"])
        # The second gateway saw the first's real usage, not its reservation.
        want = TOKENS_PER_MINUTE - USED - RESERVED
        assert (first.status, second.status, third.status) == (200, 200, 429), team
        assert want - 1 <= left <= want + 1 + elapsed * REFILL_PER_S, (team, left)
        assert third.headers["x-ratelimit-remaining-tokens"] == "0"
