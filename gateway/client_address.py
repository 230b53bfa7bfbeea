"""Who is asking: the client address of a request, for the failed-authentication limits and
the audit line.

The client is the connection's peer. Only when the peer is one of the configured trusted
proxies is `X-Forwarded-For` believed, and then read from the right (the end the proxies
append to): the client is the rightmost address that is not itself a trusted proxy. What a
client writes into the header itself lies further left and is never reached while a
trusted proxy stands to its right; a value that is not an address stops the walk at the
last hop known good.

Failures are counted per `limit_key`: an IPv4 address, or the /64 network of an IPv6
address (one subscriber usually holds a whole /64 and can pick any address in it).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from aiohttp import web

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# A peer without an IP address (a Unix socket, a transport already closed).
UNKNOWN = "unknown"


class ClientAddresses:
    def __init__(self, trusted_proxies: Sequence[IPNetwork]) -> None:
        self._trusted = tuple(trusted_proxies)

    def of(self, request: web.Request) -> str:
        peer = request.remote or UNKNOWN
        if not self._trusted or not self._is_trusted(_parse(peer)):
            return peer
        hops = [
            hop.strip()
            for value in request.headers.getall("X-Forwarded-For", ())
            for hop in value.split(",")
        ]
        client = peer
        for hop in reversed(hops):
            address = _parse(hop)
            if address is None:
                break
            client = str(address)
            if not self._is_trusted(address):
                break
        return client

    def _is_trusted(self, address: IPAddress | None) -> bool:
        return address is not None and any(address in network for network in self._trusted)


def limit_key(client: str) -> str:
    """What failures are counted under: the address, or an IPv6 address's /64."""
    if ":" not in client:  # IPv4 (as the peer or the walk above gives it) or UNKNOWN
        return client
    address = _parse(client)
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return client if address is None else str(address)


def _parse(text: str) -> IPAddress | None:
    """An address, IPv4-mapped IPv6 (a dual-stack listener's view of IPv4) as IPv4."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
