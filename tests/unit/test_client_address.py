"""The client address: the peer, unless the peer is a trusted proxy, then the rightmost
`X-Forwarded-For` hop that is not one; failures are counted per IPv4 address or IPv6 /64."""

from __future__ import annotations

import ipaddress

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from gateway.client_address import UNKNOWN, ClientAddresses, limit_key

PROXIES = ClientAddresses([ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8")])


def request(peer: str | None, *forwarded: str) -> web.Request:
    headers = [("X-Forwarded-For", value) for value in forwarded]
    mocked = make_mocked_request("GET", "/v1/models", headers=headers)
    return mocked if peer is None else mocked.clone(remote=peer)


CASES = {
    "no proxy configured: the peer": (ClientAddresses([]), "10.1.1.1", ["203.0.113.7"], "10.1.1.1"),
    "untrusted peer: header ignored": (PROXIES, "198.51.100.1", ["203.0.113.7"], "198.51.100.1"),
    "trusted peer: the hop it appended": (PROXIES, "10.1.1.1", ["203.0.113.7"], "203.0.113.7"),
    "client-written hops left of it": (
        PROXIES,
        "10.1.1.1",
        ["1.1.1.1, 2.2.2.2, 203.0.113.7"],
        "203.0.113.7",
    ),
    "a chain of trusted proxies": (
        PROXIES,
        "10.1.1.1",
        ["203.0.113.7, 10.2.2.2", "10.3.3.3"],
        "203.0.113.7",
    ),
    "trusted peer without the header": (PROXIES, "10.1.1.1", [], "10.1.1.1"),
    "junk stops at the last good hop": (PROXIES, "10.1.1.1", ["203.0.113.7, junk"], "10.1.1.1"),
    "only proxies: the leftmost": (PROXIES, "10.1.1.1", ["10.9.9.9"], "10.9.9.9"),
    "IPv6 through an IPv6 proxy": (PROXIES, "fd00::1", ["2001:db8::7"], "2001:db8::7"),
    "IPv4-mapped proxy peer": (PROXIES, "::ffff:10.1.1.1", ["203.0.113.7"], "203.0.113.7"),
    "no peer address": (PROXIES, None, ["203.0.113.7"], UNKNOWN),
}


@pytest.mark.parametrize(
    ("addresses", "peer", "forwarded", "client"), CASES.values(), ids=CASES.keys()
)
def test_the_client_is_the_rightmost_hop_not_a_trusted_proxy(
    addresses: ClientAddresses, peer: str | None, forwarded: list[str], client: str
) -> None:
    assert addresses.of(request(peer, *forwarded)) == client


def test_failures_are_counted_per_ipv4_address_and_per_ipv6_64() -> None:
    assert limit_key("203.0.113.7") == "203.0.113.7"
    assert limit_key("::ffff:203.0.113.7") == "203.0.113.7"
    assert limit_key("2001:db8:1:2:aaaa::1") == limit_key("2001:db8:1:2:bbbb::2")
    assert limit_key("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert limit_key("2001:db8:1:3::1") != limit_key("2001:db8:1:2::1")
    assert limit_key(UNKNOWN) == UNKNOWN
