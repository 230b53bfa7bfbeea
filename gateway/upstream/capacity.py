"""Upstream capacity, and the fair queue for it when it is full.

`upstreams.<name>.max_in_flight` bounds the calls in flight from this process to one
upstream (a stream counts until it ends or its client leaves); absent, the upstream is
unbounded and costs nothing here. The bound is per process, not coordinated through Redis:
a slot is taken and given back on every call, twice per request, and a shared count would
be a Redis round trip on each (the hot path has at most one, the rate limit's, and mostly
none: see `limiter.slices`), and a lost release would strand capacity until a lease
expired. So with R replicas of W workers each, give each process its share: a vLLM server
that serves 64 sequences at once behind 2 replicas x 2 workers gets `max_in_flight: 16`.

When every upstream a call may use (those of its route, HIPAA eligibility included, not yet
tried by this call) is full, the call waits in line: in its team's queue for the model,
one queue per team, model and class. Queues are served by start-time fair queueing (SFQ;
Goyal, Vin and Cheng, 1996): a call gets the start tag S = max(V, F) where F is its
queue's finish tag, and the queue's finish tag becomes S + 1/share; a freed slot goes to
the waiting call with the smallest start tag among those that may use that upstream (the
normal class first, the low class only when no normal call waits for it), and V becomes
that tag. So under saturation teams with work waiting are served in proportion to their
shares, and a team that was idle starts at V, ahead of every call a flooding team queued
after V: it is served within about one slot. SFQ rather than deficit round robin: calls
have no known size (a stream's length is learnt at its end), so each costs one; and a
freed slot is on one upstream that only some waiting calls may use (HIPAA, retries),
which a smallest-eligible-tag choice handles directly where a round-robin pointer would
have to skip and remember. Ties go to the earlier arrival.

Bounds: a call waits at most its `max_wait_ms` (then 503 `model_overloaded` with
Retry-After, never sent upstream), a team's queue for a model holds at most `max_depth`
(beyond: refused at once), and a call whose client leaves leaves the line at once, holding
nothing. A retry comes back with its first start tag: it is not charged again, and it is
ahead of calls that arrived after it.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from gateway.config import GatewayConfig
from gateway.errors import ModelOverloaded
from gateway.observability.metrics import GatewayMetrics
from gateway.routing import Claimant


class QueueRefused(Exception):
    """The call may not wait (queue full, or its wait ran out): `reason` for the metric."""

    def __init__(self, reason: str, retry_after_s: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s

    def error(self) -> ModelOverloaded:
        return ModelOverloaded(
            "The model's capacity is full (every upstream that may serve this request is "
            "busy and the wait for one ran out or the queue is full); this is not your "
            "team's rate limit. Retry later.",
            headers={"Retry-After": str(self.retry_after_s)},
        )


@dataclass(slots=True)
class Place:
    """One call's place in line, kept across its attempts: a retry keeps its start tag."""

    claimant: Claimant
    model: str
    start: float | None = None
    # Seconds this call has waited for capacity, over all its attempts.
    waited_s: float = 0.0


@dataclass(slots=True)
class _Waiter:
    place: Place
    start: float
    order: int
    eligible: frozenset[str]
    future: asyncio.Future[str]


@dataclass(slots=True)
class _Queue:
    share: float
    finish: float = 0.0
    # The finish tag of its last call that was served: where `finish` goes back to when
    # every call after it left the line unserved.
    served_finish: float = 0.0
    waiting: deque[_Waiter] = field(default_factory=deque)


QueueKey = tuple[str, str, bool]  # model, team, low class


class Capacity:
    """The process's upstream slots and the queues waiting for them (shared by every
    configuration generation: a reload keeps who holds and who waits)."""

    def __init__(
        self,
        limits: dict[str, int | None],
        on_depth: Callable[[str, str, int], None] = lambda model, team, delta: None,
    ) -> None:
        # Upstreams with a bound only; the others are never counted.
        self._limits = {name: limit for name, limit in limits.items() if limit is not None}
        self.in_flight = dict.fromkeys(self._limits, 0)
        self._queues: dict[QueueKey, _Queue] = {}
        self._virtual = 0.0
        self._order = itertools.count()
        # Waiting calls that may use each upstream: a free slot is taken at once only when
        # none waits for it (otherwise a newcomer would pass the line).
        self._waiting_for = dict.fromkeys(self._limits, 0)
        self._waiting = 0
        self._on_depth = on_depth

    def bounded(self, name: str) -> bool:
        return name in self._limits

    def has_free(self, name: str) -> bool:
        """A call would get a slot on `name` now without passing anyone in line."""
        limit = self._limits.get(name)
        return limit is None or (self.in_flight[name] < limit and not self._waiting_for[name])

    def try_take(self, name: str) -> bool:
        if name not in self._limits:
            return True
        if self.has_free(name):
            self.in_flight[name] += 1
            return True
        return False

    async def take(self, place: Place, candidates: Sequence[str], until: float) -> str:
        """A slot on one of `candidates` (bounded upstreams, all full), waiting in line
        until `until` (event-loop time); the upstream whose slot it got. Raises
        QueueRefused; a cancelled wait leaves the line."""
        claimant = place.claimant
        key = (place.model, claimant.team, claimant.low_priority)
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _Queue(claimant.share)
        queue.share = claimant.share  # a reload may have changed it
        retry_after = max(1, math.ceil(claimant.max_wait_s))
        if len(queue.waiting) >= claimant.max_depth:
            raise QueueRefused("queue_full", retry_after)
        loop = asyncio.get_running_loop()
        if until <= loop.time():
            raise QueueRefused("max_wait", retry_after)
        if place.start is None:  # a retry keeps its place; a first try is charged
            place.start = max(self._virtual, queue.finish)
            queue.finish = place.start + 1.0 / queue.share
        waiter = _Waiter(
            place, place.start, next(self._order), frozenset(candidates), loop.create_future()
        )
        _in_order(queue.waiting, waiter)
        self._waiting += 1
        for name in waiter.eligible:
            self._waiting_for[name] += 1
        self._on_depth(place.model, claimant.team, 1)
        began = loop.time()
        try:
            async with asyncio.timeout_at(until):
                return await waiter.future
        except BaseException as failure:
            if waiter.future.done() and not waiter.future.cancelled():
                # The slot was handed over just as the wait ended: pass it on.
                self.release(waiter.future.result())
            else:
                self._leave(key, queue, waiter)
            if isinstance(failure, TimeoutError):
                raise QueueRefused("max_wait", retry_after) from None
            raise
        finally:
            place.waited_s += loop.time() - began

    def release(self, name: str) -> None:
        """Gives a slot of `name` back: to the first call in fair order that may use it,
        else to the upstream."""
        if name not in self._limits:
            return
        best: tuple[bool, float, int] | None = None
        chosen: tuple[QueueKey, _Queue] | None = None
        if self._waiting_for[name]:
            for key, queue in self._queues.items():
                if queue.waiting and name in queue.waiting[0].eligible:
                    head = queue.waiting[0]
                    rank = (key[2], head.start, head.order)
                    if best is None or rank < best:
                        best, chosen = rank, (key, queue)
        if chosen is None:
            self.in_flight[name] -= 1
            return
        key, queue = chosen
        waiter = queue.waiting.popleft()
        self._virtual = max(self._virtual, waiter.start)
        queue.served_finish = max(queue.served_finish, waiter.start + 1.0 / queue.share)
        self._gone(key, queue, waiter)
        waiter.future.set_result(name)  # the slot changes hands; in_flight stays

    def depth(self, model: str, team: str) -> int:
        return sum(
            len(queue.waiting)
            for (queued_model, queued_team, _), queue in self._queues.items()
            if (queued_model, queued_team) == (model, team)
        )

    def _leave(self, key: QueueKey, queue: _Queue, waiter: _Waiter) -> None:
        try:
            queue.waiting.remove(waiter)
        except ValueError:
            return
        if not queue.waiting:
            # Every call after the last one served left unserved: none is charged.
            queue.finish = min(queue.finish, max(queue.served_finish, self._virtual))
        self._gone(key, queue, waiter)

    def _gone(self, key: QueueKey, queue: _Queue, waiter: _Waiter) -> None:
        self._waiting -= 1
        for name in waiter.eligible:
            self._waiting_for[name] -= 1
        self._on_depth(key[0], key[1], -1)
        if not self._waiting:
            # The end of a busy period: no past is owed (SFQ's virtual time moves to the
            # largest finish tag), and no queue needs remembering.
            self._virtual = max([self._virtual, *(q.finish for q in self._queues.values())])
            self._queues.clear()
        elif not queue.waiting and queue.finish <= self._virtual:
            del self._queues[key]  # nothing to remember: its next call starts at V anyway


def _in_order(waiting: deque[_Waiter], waiter: _Waiter) -> None:
    """Into its queue by start tag: at the end for a first try, ahead of later calls for a
    retry (which keeps its tag)."""
    at = len(waiting)
    while at and waiting[at - 1].start > waiter.start:
        at -= 1
    waiting.insert(at, waiter)


def upstream_capacity(config: GatewayConfig, metrics: GatewayMetrics) -> Capacity:
    """The process's capacity book for the upstreams of `config`, its queue depths kept in
    `llm_gateway_queue_depth`."""

    def depth(model: str, team: str, delta: int) -> None:
        metrics.child(metrics.queue_depth, model, team).inc(delta)

    return Capacity(
        {name: upstream.max_in_flight for name, upstream in config.upstreams.items()}, depth
    )
