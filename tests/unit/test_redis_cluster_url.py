"""`rate_limits.redis_url` selects a Redis Cluster with `redis+cluster://` (`rediss+cluster://`
for TLS): the nodes it lists are where the slot map is first read, and each node found is
reached with the URL's credentials and options; a cluster has database 0 only, and a URL
that cannot work is refused at load time, naming its field and never quoting it."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, parse_config
from gateway.limiter.nodes import RedisTarget
from tests.conftest import UPSTREAM_KEY, UPSTREAM_KEY_ENV, config_dict

SECRET = "s3cret-password"


def test_a_cluster_url_names_its_seed_nodes_and_how_to_reach_every_node() -> None:
    target = RedisTarget.parse(
        f"rediss+cluster://gw:{SECRET}@10.0.0.1:7000,[fd00::2]:7001,redis-c/0?ssl_cert_reqs=none"
    )

    assert target.cluster
    assert target.seeds == (("10.0.0.1", 7000), ("fd00::2", 7001), ("redis-c", 6379))
    assert (
        target.node_url("10.0.0.9", 7005)
        == f"rediss://gw:{SECRET}@10.0.0.9:7005/0?ssl_cert_reqs=none"
    )
    assert target.node_url("fd00::9", 7005).startswith(f"rediss://gw:{SECRET}@[fd00::9]:7005/")
    assert SECRET not in repr(target)


@pytest.mark.parametrize(
    "url", ["redis://redis:6379/0", "rediss://redis:6380/2", "unix:///run/redis.sock"]
)
def test_one_server_urls_are_not_a_cluster(url: str) -> None:
    assert not RedisTarget.parse(url).cluster


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        (f"redis+cluster://gw:{SECRET}@a:7000/1", "database 0 only"),
        (f"redis+cluster://gw:{SECRET}@a:7000,:7001", "has no host"),
        (f"redis+cluster://gw:{SECRET}@a:70000", "invalid port"),
        (f"memcached://gw:{SECRET}@a:11211", "unknown Redis URL scheme"),
        (f"gw:{SECRET}@a:7000", "starts with redis://"),
    ],
)
def test_urls_that_cannot_work_are_refused_at_load_time(url: str, problem: str) -> None:
    raw = config_dict("http://127.0.0.1:9")
    raw["rate_limits"] = {"redis_url": url}

    with pytest.raises(ConfigError) as caught:
        parse_config(raw, environ={UPSTREAM_KEY_ENV: UPSTREAM_KEY})

    (line,) = caught.value.problems
    assert line.startswith("rate_limits.redis_url: ") and problem in line, line
    assert SECRET not in str(caught.value)
