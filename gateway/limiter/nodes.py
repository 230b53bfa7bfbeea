"""The Redis servers behind the shared limits, and how one call reaches the right one.

`rate_limits.redis_url` names one server (`redis://`, `rediss://`, `unix://`) or a Redis
Cluster (`redis+cluster://host:port[,host:port...]`, `rediss+cluster://` with TLS; the nodes
listed are only where the slot map is first read). `RedisNodes` owns, for every server it
sends calls to (the one server, or each master of the cluster), a connection pool, a
breaker and a clock offset, and for a cluster the slot map and how it follows the cluster's
changes. The rate limiter (`limiter.redis`) and the failed-authentication counter
(`limiter.failures`) each have their own.

A call is one EVALSHA on the node that serves its keys' slot: every key of a call shares one
hash tag, so one slot. Calls to one node within one event-loop tick are coalesced: sent
together in one write on one connection and answered in one round trip (a pipeline, not a
transaction: each script is atomic by itself), each caller getting its own reply; under a
burst that is one round trip, and one connection, for many admissions.

Deadlines (`redis_timeout_ms`) are Redis's, not this process's: a call's deadline starts
when its batch is sent, and that is also when the deadline Redis is told (the script's
first argument) is set. A Redis that has not answered by then has missed it. A process
that is behind (more work than its core can do) sends late and reads late; an answer that
has arrived (in the connection's buffer or its socket) is read however late, and a call is
sent up to `_SEND_WITHIN_DEADLINES` deadlines after it was made. Otherwise a saturated
process counted its own lag as Redis missing deadlines, opened the breaker, and gave
almost every request the failure mode exactly when it was busiest (measured: 9,975 of
11,476 requests at 64 clients on one core). So a caller waits at most `call_bound_s`, and a
call runs on Redis no later than that after it was made, which is when what an abandoned
call may have taken is given back. NOSCRIPT (a restart, a
SCRIPT FLUSH, a promoted replica, which never saw the scripts) is answered by loading the
script on the same connection. A connection whose exchange was cancelled or failed is
dropped, never handed to the next caller with a reply still on its way; a batch runs in a
task of its own, so a caller that gives up does not interrupt it.

Breakers are per node: a node that refuses connections (or answers CLUSTERDOWN), or misses
the deadline three times in a row, gets no call for `redis_retry_interval_s`, then the next
call probes it. A dead master therefore costs the teams whose slots it served their failure
mode, and nobody else anything.

Clock offsets are per node too: every server has its own clock, so a deadline is converted
into the clock of the node the call goes to, with that node's learnt offset (see
`ClockOffset`; learnt from `TIME` before the node is first routed to, then from every
reply). A call redirected (MOVED, ASK) to a node whose offset is not known yet is not sent
there: it fails at once, unsent (its request gets the failure mode), and the slot-map
refresh learns that node's clock. A call with no deadline, such as a settlement, is simply
followed.

Failover (cluster): any failed call, and any MOVED, asks for the slot map to be read again
(CLUSTER SLOTS, from a healthy master first, then replicas, then any other node known);
while a master in the map keeps failing it is read again every `redis_retry_interval_s`,
and never more often. A replica the cluster promotes is therefore used within one retry
interval of its promotion (plus the few round trips that prepare it); in between, calls for
the dead master's slots meet its open breaker and fail at once. Newly seen masters get the
scripts and have their clock read before the map that routes to them is used.

Why not redis-py's `RedisCluster`: it follows MOVED inside one call (the deadline would be
in the wrong node's clock), marks the whole client for re-initialization after one node's
connection error (so every call, for any slot, may pay for a CLUSTER SLOTS first until the
failover is over), retries on its own (with sleeps) and knows no per-node breaker; and it
costs about 100 more Python function calls per EVALSHA than a pooled connection (734
against 636, measured on this script), 15% more client CPU on the hot path.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import hashlib
import math
import termios
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio.connection import ConnectionPool
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MaxConnectionsError,
    MovedError,
    NoScriptError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.maint_notifications import MaintNotificationsConfig

from gateway.limiter.base import LimiterUnavailable

# Consecutive missed deadlines that mark a node unavailable.
_TIMEOUTS_TO_OPEN = 3
# A process that is behind (its event loop has more work than its core can do) may send a
# call this many deadlines after the call was made, and no later; see `RedisNodes`.
_SEND_WITHIN_DEADLINES = 4
# While the answer has arrived but the process has not read it yet, its watch looks again
# this much later (a timer, so the loop polls its sockets in between).
_WATCH_AGAIN_S = 0.002
# Connections to one node at most (redis-py's default): each carries one call at a time,
# for about a round trip, so a hundred serve tens of thousands of calls a second.
_CONNECTIONS_PER_NODE = 100
_CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
_SINGLE_SCHEMES = {"redis", "rediss", "unix"}
_DEFAULT_PORT = 6379


@dataclass(frozen=True, slots=True)
class Script:
    source: str
    sha: str

    @classmethod
    def of(cls, source: str) -> Script:
        return cls(source, hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest())


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """What a `redis_url` names: one server (`seeds` empty), or a cluster reached first
    through `seeds`."""

    url: str = field(repr=False)  # credentials stay out of any repr
    seeds: tuple[tuple[str, int], ...] = ()
    scheme: str = "redis"
    userinfo: str = field(default="", repr=False)
    query: str = ""

    @property
    def cluster(self) -> bool:
        return bool(self.seeds)

    def node_url(self, host: str, port: int) -> str:
        """The URL of one cluster node, with the cluster URL's credentials and options."""
        name = f"[{host}]" if ":" in host else host
        query = f"?{self.query}" if self.query else ""
        return f"{self.scheme}://{self.userinfo}{name}:{port}/0{query}"

    @classmethod
    def parse(cls, url: str) -> RedisTarget:
        """Raises ValueError naming what is wrong (never quoting credentials)."""
        scheme, separator, rest = url.partition("://")
        if not separator:
            raise ValueError("a Redis URL starts with redis://, rediss:// or redis+cluster://")
        scheme = scheme.lower()
        if scheme in _SINGLE_SCHEMES:
            return cls(url)
        if scheme not in _CLUSTER_SCHEMES:
            known = ", ".join(sorted(_SINGLE_SCHEMES | set(_CLUSTER_SCHEMES)))
            raise ValueError(f"unknown Redis URL scheme '{scheme}' (one of: {known})")
        parts = urlsplit(f"http://{rest}")  # urlsplit knows where netloc, path, query end
        if parts.path not in ("", "/", "/0"):
            raise ValueError("a Redis Cluster has database 0 only (no path, or /0)")
        userinfo, at, hosts = parts.netloc.rpartition("@")
        seeds = tuple(_host_port(item) for item in hosts.split(","))
        return cls(
            url,
            seeds,
            _CLUSTER_SCHEMES[scheme],
            f"{userinfo}{at}",
            parts.query,
        )


def _host_port(item: str) -> tuple[str, int]:
    if item.startswith("["):  # [IPv6]:port
        host, _, port = item[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, _, port = item.rpartition(":") if ":" in item else (item, "", "")
    if not host:
        raise ValueError("every Redis Cluster node is host:port (a node has no host)")
    if not port:
        return host, _DEFAULT_PORT
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"Redis Cluster node '{host}' has an invalid port")
    return host, int(port)


class ClockOffset:
    """A node's clock minus this process's monotonic clock, in ms: a lower bound, learnt
    from replies. Redis read its clock before its answer arrived, so an answer saying
    Redis's time was R (rounded down), received at local time t, proves offset >= R - t.
    A deadline converted with a lower bound falls, in Redis time, no later than the
    caller's own, which is the side that keeps a late script from taking anything.

    The largest bound of the current and the previous window is used, so a tight sample
    counts for a while, and a Redis clock that steps back or drifts is followed within
    two windows."""

    def __init__(self, window_s: float = 30.0) -> None:
        self._window_s = window_s
        self._current = -math.inf
        self._previous = -math.inf
        self._window_ends = -math.inf

    def observe(self, redis_ms: float, received_s: float) -> None:
        sample = redis_ms - received_s * 1000.0
        if received_s >= self._window_ends:
            stale = received_s >= self._window_ends + self._window_s
            self._previous = -math.inf if stale else self._current
            self._current = sample
            self._window_ends = received_s + self._window_s
        elif sample > self._current:
            self._current = sample

    def lower_bound(self) -> float | None:
        best = max(self._current, self._previous)
        return None if best == -math.inf else best


class RedisNode:
    """One Redis server: its pool (connections open on first use), breaker and clock."""

    __slots__ = (
        "_waiters",
        "address",
        "batch",
        "batches",
        "consecutive_failures",
        "down_until",
        "offset",
        "pool",
        "timeout",
    )

    def __init__(self, address: str, url: str, timeout: float) -> None:
        self.address = address
        self.timeout = timeout
        self.pool: ConnectionPool = ConnectionPool.from_url(
            url,
            max_connections=_CONNECTIONS_PER_NODE,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # With maintenance notifications on ("auto" by default), redis-py's pool skips
            # its check that a pooled connection is still open: after a Redis restart the
            # first call on each old connection would fail and open the breaker.
            maint_notifications_config=MaintNotificationsConfig(enabled=False),
        )
        self.offset = ClockOffset()
        self.down_until = 0.0
        self.consecutive_failures = 0
        # Callers waiting for a connection while all are in use, in order of asking.
        self._waiters: deque[asyncio.Future[None]] = deque()
        # Script calls queued in this event-loop tick, sent together at its end (see
        # `_pipelined`), and the batches on their way.
        self.batch: list[_Queued] | None = None
        self.batches: set[asyncio.Task[None]] = set()

    async def connection(self) -> Any:
        """A pooled connection; while all are in use, the next one given back. redis-py's
        pool raises instead (MaxConnectionsError, a ConnectionError), which would open the
        breaker on any burst of more simultaneous calls than connections; its blocking
        variant waits, but costs a lock on every call. Here only a caller that finds none
        pays for waiting, and its own deadline bounds the wait."""
        while True:
            try:
                return await self.pool.get_connection()  # type: ignore[no-untyped-call]
            except MaxConnectionsError:
                waiter = asyncio.get_running_loop().create_future()
                self._waiters.append(waiter)
                try:
                    await waiter
                except asyncio.CancelledError:
                    if waiter.done() and not waiter.cancelled():
                        self._wake()  # woken, then cancelled: the turn goes to the next
                    raise

    async def release(self, connection: Any) -> None:
        await self.pool.release(connection)
        if self._waiters:
            self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


class _NotRun(Exception):
    """The call was answered without running (redirected nowhere we may send it, the
    cluster down, a slot being migrated): nothing to give back."""


class RedisNodes:
    def __init__(
        self,
        url: str,
        *,
        timeout_s: float,
        retry_interval_s: float,
        scripts: Sequence[Script],
    ) -> None:
        self._target = RedisTarget.parse(url)
        self._timeout = timeout_s
        # Off the request path (warm-up, learning a new node), a loaded machine gets longer.
        self._setup_timeout = max(timeout_s, 1.0)
        self._retry_interval = retry_interval_s
        self._scripts = tuple(scripts)
        # Every server ever named (seeds, masters, replicas), by address; pools are lazy.
        self._nodes: dict[str, RedisNode] = {}
        # The one server, or the cluster's masters in the current slot map.
        self._masters: tuple[RedisNode, ...] = ()
        # Cluster only: the node serving each slot; None until the map is first read.
        self._slots: list[RedisNode | None] | None = None
        # Cluster replicas in the current map: more places to read the map from.
        self._replicas: tuple[RedisNode, ...] = ()
        # Nodes that did not answer the last CLUSTER SLOTS asked of them: asked last.
        self._unanswered: set[RedisNode] = set()
        self._refresher: asyncio.Task[None] | None = None
        self._last_read = -math.inf
        self._closed = False
        if self._target.cluster:
            for host, port in self._target.seeds:
                self._node(host, port)
        else:
            self._single = RedisNode("rate_limits.redis_url", url, timeout_s)
            self._masters = (self._single,)

    @property
    def available(self) -> bool:
        """No node calls are sent to has its breaker open (and, for a cluster, the slot map
        is known)."""
        if self._target.cluster and self._slots is None:
            return False
        now = time.monotonic()
        return all(now >= node.down_until for node in self._masters)

    @property
    def call_bound_s(self) -> float:
        """How long after a script call is made it may still run on Redis, and its caller
        wait at most: sent within `_SEND_WITHIN_DEADLINES` deadlines (a process that is
        behind), then one deadline in Redis's clock."""
        return self._timeout * (1 + _SEND_WITHIN_DEADLINES)

    async def evalsha(
        self,
        script: Script,
        keys: Sequence[str],
        args: list[Any],
        *,
        with_deadline: bool = False,
        riders: tuple[int, int] | None = None,
    ) -> tuple[Any, RedisNode]:
        """Runs `script` on the node that serves `keys` (one slot); the reply and the node
        that answered it (whose clock it read). With `with_deadline`, the script's first
        argument is set, when the call is sent, to the call deadline in the clock of the
        node it is sent to ('' while that clock is not known).

        `riders` (index, n): `args[index]` is a count n followed by n strings that must
        reach the node before this call's own work, and that other calls may carry too
        (settlements). A call later in the same batch runs after the earlier ones (one
        connection, in order), so it leaves out what an earlier call of the batch carries:
        under a burst, a team's unconfirmed settlements are sent once per round trip, not
        once per admission (which made Redis's work per batch grow with its square).

        The deadline runs from when the call is sent, not from when it was made: a process
        that is behind sends its calls late and reads their answers late, and an answer
        that has reached this process is read, however late, up to `call_bound_s` (Redis
        took nothing after the deadline in its own clock, and its answer says so). Only a
        Redis that has not answered within the deadline of the send misses it.
        Raises LimiterUnavailable."""
        node = self._route(keys[0])
        started = time.monotonic()
        at = [node]  # the node being talked to, for the failure's account
        try:
            async with asyncio.timeout(self.call_bound_s):
                reply = await self._follow_redirects(
                    at, script, keys, args, with_deadline, riders, started
                )
        except _NotRun as not_run:
            raise LimiterUnavailable(str(not_run)) from None
        except (RedisError, OSError, TimeoutError) as exc:
            # A refused connection opens the breaker at once; a missed deadline only after
            # _TIMEOUTS_TO_OPEN in a row (TimeoutError is an OSError: tell them apart).
            refused = isinstance(exc, RedisConnectionError | OSError) and not isinstance(
                exc, TimeoutError
            )
            self.failed(at[-1], refused=refused)
            # Sent or not, we cannot tell: Redis may run it, or have run it, anyway.
            raise LimiterUnavailable(type(exc).__name__, may_have_run=True) from None
        answered = at[-1]
        answered.consecutive_failures = 0
        answered.down_until = 0.0
        return reply, answered

    async def command(self, key: str, *command: Any) -> Any:
        """One plain command on the node serving `key`, with the same deadline and
        breaker (not on the request path)."""
        node = self._route(key)
        try:
            async with asyncio.timeout(self._timeout):
                return await _exchange(node, command)
        except (RedisError, OSError, TimeoutError) as exc:
            self.failed(node, refused=False)
            raise LimiterUnavailable(type(exc).__name__, may_have_run=True) from None

    def failed(self, node: RedisNode, *, refused: bool) -> None:
        """A call to `node` failed (refused: it cannot be reached at all)."""
        node.consecutive_failures += 1
        if refused or node.consecutive_failures >= _TIMEOUTS_TO_OPEN:
            node.down_until = time.monotonic() + self._retry_interval
        if self._target.cluster:
            self._refresh_soon()

    async def warm_up(self, *, mark_failure: bool) -> None:
        """Before traffic: read the slot map (cluster), load the scripts on every master and
        learn its clock, so the first requests pay for none of it and get a deadline.
        Never raises; a node that cannot be prepared now is marked failed when
        `mark_failure` (readiness then says so until a call probes it again)."""
        if self._target.cluster:
            unprepared = await self._read_slot_map()
        else:
            unprepared = [] if await self._prepare(self._single) else [self._single]
        if mark_failure:  # down from the start: say so until a call probes again
            for node in unprepared or ():
                self.failed(node, refused=True)

    async def close(self) -> None:
        self._closed = True
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        nodes = self._nodes.values() if self._target.cluster else (self._single,)
        batches = [task for node in nodes for task in node.batches]
        if batches:  # each is bounded by the connection's timeouts
            await asyncio.wait(batches, timeout=self._setup_timeout)
        # A pool hands its connections out but closes them only when asked.
        await asyncio.gather(*(node.pool.disconnect() for node in nodes))

    # ------------------------------------------------------------------ routing

    def _route(self, key: str) -> RedisNode:
        """The node serving `key`, if it may be called now; else LimiterUnavailable."""
        if not self._target.cluster:
            node = self._single
        else:
            slots = self._slots
            found = None if slots is None else slots[key_slot(key.encode())]
            if found is None:
                self._refresh_soon()
                raise LimiterUnavailable("no Redis Cluster node is known for this key's slot")
            node = found
        if time.monotonic() < node.down_until:
            raise LimiterUnavailable("Redis is marked unavailable; retrying it shortly")
        return node

    async def _follow_redirects(
        self,
        at: list[RedisNode],
        script: Script,
        keys: Sequence[str],
        args: list[Any],
        with_deadline: bool,
        riders: tuple[int, int] | None,
        started: float,
    ) -> Any:
        """The call on `at[-1]`, and on the node a MOVED or ASK names (once: a second
        redirect means the cluster is being changed faster than this call can follow)."""
        send_by = started + self._timeout * _SEND_WITHIN_DEADLINES
        asking = False
        for _ in range(2):
            node = at[-1]
            try:
                if asking:
                    if with_deadline:
                        _stamp(args, min(time.monotonic(), send_by) + self._timeout, node)
                    command = ("EVALSHA", script.sha, len(keys), *keys, *args)
                    async with asyncio.timeout(self._timeout):
                        return await _exchange(node, command, script, asking=True)
                queued = _Queued(script, keys, args, with_deadline, riders, send_by)
                return await _pipelined(node, queued)
            except AskError as redirect:  # MovedError is an AskError
                if not self._target.cluster:
                    raise _NotRun(
                        "this Redis is a cluster node: set rate_limits.redis_url to "
                        "redis+cluster://host:port"
                    ) from None
                moved = isinstance(redirect, MovedError)
                if moved:
                    self._refresh_soon()
                target = self._node(redirect.host, redirect.port)
                if with_deadline and target.offset.lower_bound() is None:
                    raise _NotRun(
                        f"redirected to {target.address}, whose clock is not known yet"
                    ) from None
                if time.monotonic() < target.down_until:
                    raise _NotRun(f"redirected to {target.address}, marked unavailable") from None
                at.append(target)
                asking = not moved
            except ClusterDownError:
                # The node cannot serve while its cluster is down: as good as refused.
                self.failed(node, refused=True)
                raise _NotRun("the Redis Cluster is down (CLUSTERDOWN)") from None
            except TryAgainError:
                raise _NotRun("the slot is being migrated (TRYAGAIN)") from None
        raise _NotRun("redirected twice in one call")

    async def _prepare(self, node: RedisNode) -> bool:
        """Loads the scripts on `node` and learns its clock; False when it cannot now."""
        try:
            async with asyncio.timeout(self._setup_timeout):
                for script in self._scripts:
                    await _exchange(node, ("SCRIPT", "LOAD", script.source))
                seconds, micros = await _exchange(node, ("TIME",))
        except (RedisError, OSError):  # TimeoutError among them
            return False
        node.offset.observe(int(seconds) * 1000 + int(micros) // 1000, time.monotonic())
        return True

    def _node(self, host: str, port: int) -> RedisNode:
        address = f"{host}:{port}"
        node = self._nodes.get(address)
        if node is None:
            node = self._nodes[address] = RedisNode(
                address, self._target.node_url(host, port), self._timeout
            )
        return node

    # ------------------------------------------------------------------ slot map

    def _refresh_soon(self) -> None:
        """Reads the slot map again in the background, unless that is already under way."""
        if not self._closed and (self._refresher is None or self._refresher.done()):
            self._refresher = asyncio.get_running_loop().create_task(
                self._keep_up(), name="redis-cluster-slot-map"
            )

    async def _keep_up(self) -> None:
        """Reads the slot map (at most once per retry interval), and again every retry
        interval while a master in it is failing."""
        while True:
            wait = self._last_read + self._retry_interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            await self._read_slot_map()
            if self._slots is not None and not any(
                node.consecutive_failures for node in self._masters
            ):
                return

    async def _read_slot_map(self) -> list[RedisNode] | None:
        """CLUSTER SLOTS from the first node that answers: masters that are not failing
        first, then replicas, then the rest (configured, failing, former nodes), those that
        failed to answer last time last. Each gets a call deadline (at least 0.25 s), so
        one that is gone costs little. The masters that could not be prepared; None when
        no node answered."""
        self._last_read = time.monotonic()
        masters = [node for node in self._masters if not node.consecutive_failures]
        others = [node for node in self._nodes.values() if node not in masters]
        others.sort(
            key=lambda node: (
                node in self._unanswered,
                node not in self._replicas,
                node.consecutive_failures,
            )
        )
        for node in masters + others:
            try:
                reply = await asyncio.wait_for(
                    _exchange(node, ("CLUSTER", "SLOTS")), max(self._timeout, 0.25)
                )
                slot_map = self._slot_map(node, reply)
            except (RedisError, OSError, ValueError, TypeError, IndexError):
                self._unanswered.add(node)
                continue
            self._unanswered.discard(node)
            return await self._use(*slot_map)
        return None

    def _slot_map(
        self, source: RedisNode, reply: Any
    ) -> tuple[list[RedisNode | None], list[RedisNode], list[RedisNode]]:
        """The node of each slot, the masters and the replicas, from a CLUSTER SLOTS reply
        (ValueError when it maps nothing: a node that is not in a cluster yet)."""
        slots: list[RedisNode | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
        masters: dict[str, RedisNode] = {}
        replicas: dict[str, RedisNode] = {}
        asked = source.address.rpartition(":")[0]
        for start, end, master, *others in reply:
            node = self._node(*_endpoint(master, asked))
            masters[node.address] = node
            slots[int(start) : int(end) + 1] = [node] * (int(end) - int(start) + 1)
            for replica in others:
                found = self._node(*_endpoint(replica, asked))
                replicas[found.address] = found
        if not masters:
            raise ValueError("an empty slot map")
        return slots, list(masters.values()), list(replicas.values())

    async def _use(
        self, slots: list[RedisNode | None], masters: list[RedisNode], replicas: list[RedisNode]
    ) -> list[RedisNode]:
        """Publishes a slot map once its new masters are prepared (scripts loaded, clocks
        read); the new masters that could not be (routed to anyway: their calls decide
        whether they are failing)."""
        new = [node for node in masters if node not in self._masters]
        for node in new:
            # The cluster says it serves: whatever it did before (a failed master that came
            # back, a replica) is no reason to skip it now.
            node.consecutive_failures = 0
            node.down_until = 0.0
        prepared = await asyncio.gather(*(self._prepare(node) for node in new))
        self._slots = slots
        self._masters = tuple(masters)
        self._replicas = tuple(replicas)
        return [node for node, ok in zip(new, prepared, strict=True) if not ok]


def _endpoint(entry: Sequence[Any], asked_host: str) -> tuple[str, int]:
    """(host, port) of a CLUSTER SLOTS node entry; an empty or '?' host means the node that
    answered (Redis's "same host as the one you asked")."""
    host = entry[0].decode() if isinstance(entry[0], bytes) else str(entry[0])
    return (asked_host if host in ("", "?") else host), int(entry[1])


def _stamp(args: list[Any], deadline: float, node: RedisNode) -> None:
    """The deadline (monotonic seconds) as the script's first argument, in `node`'s clock;
    none while that clock is not known."""
    offset = node.offset.lower_bound()
    args[0] = "" if offset is None else math.floor(deadline * 1000 + offset)


class _Queued:
    """One script call in a node's batch, with its deadline set when the batch is sent."""

    __slots__ = ("args", "future", "keys", "riders", "script", "send_by", "with_deadline")

    def __init__(
        self,
        script: Script,
        keys: Sequence[str],
        args: list[Any],
        with_deadline: bool,
        riders: tuple[int, int] | None,
        send_by: float,
    ) -> None:
        self.script = script
        self.keys = keys
        self.args = args
        self.with_deadline = with_deadline
        self.riders = riders
        self.send_by = send_by
        self.future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def command(self, node: RedisNode, sent: float, carried: set[Any]) -> tuple[Any, ...]:
        """The command as sent now, without the riders an earlier call of its batch
        carries (`carried`, to which it adds its own)."""
        args = self.args
        if self.with_deadline:
            _stamp(args, sent + node.timeout, node)
        if self.riders is not None:
            at, count = self.riders
            riders = args[at + 1 : at + 1 + count]
            kept = [rider for rider in riders if rider not in carried]
            carried.update(kept)
            if len(kept) < count:
                args = [*args[:at], len(kept), *kept, *args[at + 1 + count :]]
        return ("EVALSHA", self.script.sha, len(self.keys), *self.keys, *args)


async def _pipelined(node: RedisNode, queued: _Queued) -> Any:
    """One script call on `node`, sent with every other call made to it in the same
    event-loop tick: one write and one round trip for all (a pipeline, not a transaction:
    each is its own atomic script), each caller getting its own reply or error. The batch
    runs in a task of its own, so a caller that gives up (deadline, cancellation) leaves
    it to read every reply: its connection goes back to the pool clean."""
    if node.batch is None:
        node.batch = []
        asyncio.get_running_loop().call_soon(_send_batch, node)
    node.batch.append(queued)
    return await queued.future


def _send_batch(node: RedisNode) -> None:
    batch, node.batch = node.batch or [], None
    task = asyncio.get_running_loop().create_task(_run_batch(node, batch), name="redis-batch")
    node.batches.add(task)
    task.add_done_callback(node.batches.discard)


async def _run_batch(node: RedisNode, batch: list[_Queued]) -> None:
    """Sends the batch's calls that may still be sent, each with the deadline of this send,
    and hands out their replies; a watch fails the callers whose answers have not arrived
    by the deadline (`_Watch`)."""
    try:
        connection = await node.connection()
    except BaseException as exc:  # every caller gets the failure
        _fail(batch, exc)
        return
    replies: list[Any] = []
    watch: _Watch | None = None
    try:
        sent = time.monotonic()
        late = [queued for queued in batch if sent > queued.send_by]
        if late:
            _fail(late, _NotRun("not sent in time: this process is overloaded"))
        # Callers that gave up before the send: their calls never run.
        batch = [queued for queued in batch if not queued.future.done()]
        if not batch:
            return
        carried: set[Any] = set()
        commands = [queued.command(node, sent, carried) for queued in batch]
        # Replies are read for as long as a caller may wait for one (the callers'
        # deadline is kept by the watch).
        read_for = node.timeout * (1 + _SEND_WITHIN_DEADLINES)
        watch = _Watch(batch, connection, sent + read_for)
        watch.arm(node.timeout)
        await connection.send_packed_command(connection.pack_commands(commands))
        for _ in batch:
            replies.append(await _reply(connection, read_for))
        # NOSCRIPT (a restarted or flushed Redis): load the scripts, send those again.
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            for script in {batch[i].script for i in missing}:
                await connection.send_command("SCRIPT", "LOAD", script.source)
                await connection.read_response()
            again = connection.pack_commands([commands[i] for i in missing])
            await connection.send_packed_command(again)
            for i in missing:
                replies[i] = await _reply(connection, read_for)
    except BaseException as exc:
        # A reply may still be in flight on this connection: never hand it to a caller.
        await connection.disconnect(nowait=True)
        _fail(batch, exc)
        if isinstance(exc, asyncio.CancelledError):
            raise
        return
    finally:
        if watch is not None:
            watch.cancel()
        await node.release(connection)
    for queued, reply in zip(batch, replies, strict=True):
        if not queued.future.done():
            if isinstance(reply, Exception):
                queued.future.set_exception(reply)
            else:
                queued.future.set_result(reply)


class _Watch:
    """Fails a sent batch's callers whose answers have not arrived by the deadline. An
    answer that has arrived but is not read yet (in the connection's buffer or its
    socket: the process is behind) is waited for, up to `until`."""

    __slots__ = ("batch", "connection", "handle", "until")

    def __init__(self, batch: list[_Queued], connection: Any, until: float) -> None:
        self.batch = batch
        self.connection = connection
        self.until = until
        self.handle: asyncio.TimerHandle | None = None

    def arm(self, delay: float) -> None:
        self.handle = asyncio.get_running_loop().call_later(delay, self._check)

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()

    def _check(self) -> None:
        if all(queued.future.done() for queued in self.batch):
            return
        if time.monotonic() < self.until and _answer_waiting(self.connection):
            self.arm(_WATCH_AGAIN_S)
            return
        _fail(self.batch, TimeoutError())


def _answer_waiting(connection: Any) -> bool:
    """Whether bytes of an answer have reached this process but not been read: in the
    connection's stream buffer, or in its socket's receive queue (FIONREAD)."""
    reader = getattr(connection, "_reader", None)
    if reader is not None and getattr(reader, "_buffer", None):
        return True
    writer = getattr(connection, "_writer", None)
    sock = None if writer is None else writer.get_extra_info("socket")
    if sock is None:
        return False
    waiting = array.array("i", [0])
    try:
        fcntl.ioctl(sock.fileno(), termios.FIONREAD, waiting, True)
    except (OSError, ValueError):  # closed meanwhile
        return False
    return waiting[0] > 0


async def _reply(connection: Any, read_for: float) -> Any:
    """The next reply; an error reply (already read whole) as its exception."""
    try:
        return await connection.read_response(timeout=read_for)
    except ResponseError as error:
        return error


def _fail(batch: list[_Queued], exc: BaseException) -> None:
    for queued in batch:
        future = queued.future
        if not future.done():
            if isinstance(exc, asyncio.CancelledError):
                future.cancel()
            else:
                future.set_exception(exc)


async def _exchange(
    node: RedisNode, command: Sequence[Any], script: Script | None = None, *, asking: bool = False
) -> Any:
    """One command on a pooled connection of `node` (after ASKING, when redirected so);
    NOSCRIPT is answered by loading `script` and sending the command again. This skips
    redis-py's client layers (retries, events, observability hooks, and the cluster
    client's topology handling), which cost more CPU than the round trip itself; the
    connection, its hiredis parser and the pool are redis-py's."""
    connection = await node.connection()
    try:
        if asking:  # allows the next command only
            await connection.send_command("ASKING")
            await connection.read_response()
        await connection.send_command(*command)
        try:
            return await connection.read_response()
        except NoScriptError:
            if script is None:
                raise
            await connection.send_command("SCRIPT", "LOAD", script.source)
            await connection.read_response()
            if asking:
                await connection.send_command("ASKING")
                await connection.read_response()
            await connection.send_command(*command)
            return await connection.read_response()
    except BaseException:
        # Cancelled or failed mid-call: a reply may still be in flight on this
        # connection, and the next caller must never read it as its own.
        await connection.disconnect(nowait=True)
        raise
    finally:
        await node.release(connection)
