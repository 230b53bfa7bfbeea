"""Row 20: the failure limit costs a valid key nothing: only failures are counted, so with
the count in Redis a request that authenticates sends Redis no command, whether or not
another address is blocked at the time; a failure sends exactly one (the counting script:
one round trip). Read from the real redis-server's own command statistics."""

from __future__ import annotations

from tests.conftest import RedisProcess, RunningUpstream, StartGateway
from tests.fault_matrix.brute_force import (
    OTHER_SOURCE,
    THRESHOLD,
    guarded_config,
    send,
    valid,
)


def commands_run(redis: RedisProcess) -> dict[str, int]:
    """Calls per command since the last CONFIG RESETSTAT, the statistics' own excluded."""
    calls = {}
    for line in redis.command("INFO", "commandstats").decode().splitlines():
        if line.startswith("cmdstat_"):
            name, _, stats = line.removeprefix("cmdstat_").partition(":")
            calls[name] = int(stats.split(",")[0].removeprefix("calls="))
    return {name: n for name, n in calls.items() if name not in ("config|resetstat", "info")}


async def test_row_20_a_valid_key_sends_redis_nothing_and_a_failure_one_script(
    start_gateway: StartGateway, upstream: RunningUpstream, redis_server: RedisProcess
) -> None:
    gateway = await start_gateway(guarded_config(upstream.url, redis_server.url))
    assert (await valid(gateway.url)).status == 200  # connections and scripts are ready
    assert redis_server.command("CONFIG", "RESETSTAT").startswith(b"+OK")

    served = [(await valid(gateway.url)).status for _ in range(20)]
    quiet = commands_run(redis_server)
    await send(gateway.url, THRESHOLD + 1, source=OTHER_SOURCE)  # 127.0.0.2 is blocked
    assert redis_server.command("CONFIG", "RESETSTAT").startswith(b"+OK")
    served += [(await valid(gateway.url)).status for _ in range(20)]
    quiet_while_blocking = commands_run(redis_server)
    await send(gateway.url)

    assert served == [200] * 40
    assert quiet == {}
    assert quiet_while_blocking == {}
    # One call from the gateway; Redis counts the script's own commands too.
    assert commands_run(redis_server) == {"evalsha": 1, "incr": 1, "pexpire": 1, "pttl": 1}
