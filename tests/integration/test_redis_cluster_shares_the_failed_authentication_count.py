"""On a Redis Cluster, gateways share each client address's failed-authentication count:
failures spread over two gateways add up, and the one past the threshold is refused 429 by
either. Addresses whose keys hash to different masters are counted each on its own master,
where the count expires with its block."""

from __future__ import annotations

from redis.crc import key_slot

from tests.conftest import RedisClusterProcesses, RunningUpstream, StartGateway
from tests.fault_matrix.brute_force import THRESHOLD, guarded_config, send


def addresses_on_two_masters(cluster: RedisClusterProcesses) -> dict[str, int]:
    """Two loopback client addresses whose counters live on different masters."""
    found: dict[int, str] = {}
    for i in range(1, 255):
        address = f"127.0.0.{i}"
        master = cluster.master_of_slot(key_slot(f"llmgw:authfail:{address}".encode()))
        found.setdefault(master, address)
        if len(found) == 2:
            return {address: master for master, address in found.items()}
    raise AssertionError("no two loopback addresses on different masters")


async def test_two_gateways_share_each_addresss_count_on_its_master(
    start_gateway: StartGateway, upstream: RunningUpstream, redis_cluster: RedisClusterProcesses
) -> None:
    raw = guarded_config(upstream.url, redis_cluster.url)
    first, second = await start_gateway(raw), await start_gateway(raw)
    addresses = addresses_on_two_masters(redis_cluster)

    for address, master in addresses.items():
        statuses = []
        for i in range(THRESHOLD):
            gateway = (first, second)[i % 2]
            statuses.append((await send(gateway.url, source=address))[0].status)
        over = [(await send(g.url, source=address))[0] for g in (second, first)]
        ttl = redis_cluster.node(master).command("PTTL", f"llmgw:authfail:{address}")

        assert statuses == [401] * THRESHOLD, address
        assert [reply.status for reply in over] == [429, 429], address
        assert {reply.json()["error"]["code"] for reply in over} == {"too_many_auth_failures"}
        assert 55_000 < int(ttl[1:].strip()) <= 60_000, (address, ttl)  # the block, there
