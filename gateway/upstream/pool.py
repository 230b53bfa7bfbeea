"""The gateway's own bound on connections to each upstream (`max_connections`) and the
bounded wait for one (`pool_timeout`).

An HTTP/1.1 request holds one connection from its start until its answer is read or its
stream closed, so the connections in use to an upstream are counted as the requests that
hold a slot here. The connections themselves (`http1`) never make a request wait: a
request with a slot takes an idle connection or opens one; this is the only queue. Waiting
for a slot is the gateway's backpressure, not a sign of the upstream's health: a wait that
runs out is answered 503 `upstream_busy` and never counted toward ejection. Slots are
handed to waiters first come, first served.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque


class PoolTimeout(Exception):
    """No connection to the upstream was freed within the wait allowed."""


class ConnectionPool:
    def __init__(self, limit: int, timeout: float) -> None:
        self.limit = limit
        self.timeout = timeout
        self.in_use = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def has_free(self) -> bool:
        """A request would get a connection without waiting."""
        return self.in_use < self.limit and not self._waiters

    def try_acquire(self) -> bool:
        """Takes a slot if one is free now, without waiting."""
        if self.has_free:
            self.in_use += 1
            return True
        return False

    async def acquire(self, until: float) -> None:
        """Waits for a slot until `until` (event-loop time); raises PoolTimeout."""
        if self.try_acquire():
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout_at(until):
                await waiter
        except BaseException as failure:
            if waiter.done() and not waiter.cancelled():
                # The slot was handed over just as the wait ended: pass it on.
                self.release()
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            if isinstance(failure, TimeoutError):
                raise PoolTimeout from None
            raise

    def release(self) -> None:
        """Gives a slot back: to the longest waiter, else to the pool."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot changes hands; in_use stays
                return
        self.in_use -= 1
