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
that tag. V is the model's own (service on other models does not move it); an upstream
shared by several models gives its slot to the call nearest its model's V. So under
saturation teams with work waiting are served in proportion to their shares, and a team
that was idle starts at V, ahead of every call a flooding team queued after V: it is
served within about one slot. SFQ rather than deficit round robin: calls
have no known size (a stream's length is learnt at its end), so each costs one; and a
freed slot is on one upstream that only some waiting calls may use (HIPAA, retries),
which a smallest-eligible-tag choice handles directly where a round-robin pointer would
have to skip and remember. Ties go to the earlier arrival.

Bounds: a call waits at most its `max_wait_ms` (then 503 `model_overloaded` with
Retry-After, never sent upstream), a team's queue for a model holds at most `max_depth`
(both classes together; beyond: refused at once), and a call whose client leaves leaves
the line at once, holding nothing, and is not charged: the calls of its queue behind it
move up. The wait is the call's, over all its attempts. A retry comes back with its first
start tag: it is not charged again, and it is ahead of calls that arrived after it.
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
    charged: bool  # its queue's finish tag counts it (a first try; a retry was already)


@dataclass(slots=True)
class _Queue:
    share: float
    finish: float = 0.0
    waiting: deque[_Waiter] = field(default_factory=deque)


@dataclass(slots=True)
class _Line:
    """One model's queues (one per team and class) and its virtual time: SFQ's clock runs
    per model, so service on other models' upstreams does not move it."""

    virtual: float = 0.0
    waiting: int = 0
    queues: dict[tuple[str, bool], _Queue] = field(default_factory=dict)


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
        self._lines: dict[str, _Line] = {}
        self._order = itertools.count()
        # Waiting calls that may use each upstream: a free slot is taken at once only when
        # none waits for it (otherwise a newcomer would pass the line).
        self._waiting_for = dict.fromkeys(self._limits, 0)
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
        """A slot on one of `candidates`, waiting in line until `until` (event-loop time)
        when none is free now; the upstream whose slot it got. Raises QueueRefused; a
        cancelled wait leaves the line."""
        for name in candidates:  # an unbounded one, or a free slot: no wait
            if self.try_take(name):
                return name
        claimant = place.claimant
        retry_after = max(1, math.ceil(claimant.max_wait_s))
        line = self._lines.get(place.model)
        depth = 0 if line is None else _depth(line, claimant.team)
        if depth >= claimant.max_depth:
            raise QueueRefused("queue_full", retry_after)
        loop = asyncio.get_running_loop()
        if until <= loop.time():
            raise QueueRefused("max_wait", retry_after)
        if line is None:
            line = self._lines[place.model] = _Line()
        key = (claimant.team, claimant.low_priority)
        queue = line.queues.get(key)
        if queue is None:
            queue = line.queues[key] = _Queue(claimant.share)
        queue.share = claimant.share  # a reload may have changed it
        charged = place.start is None  # a retry keeps its place and is not charged again
        if charged:
            place.start = max(line.virtual, queue.finish)
            queue.finish = place.start + 1.0 / queue.share
        assert place.start is not None
        eligible = frozenset(name for name in candidates if name in self._limits)
        waiter = _Waiter(
            place, place.start, next(self._order), eligible, loop.create_future(), charged
        )
        _in_order(queue.waiting, waiter)
        line.waiting += 1
        for name in eligible:
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
                self._leave(place.model, line, key, queue, waiter)
            if isinstance(failure, TimeoutError):
                raise QueueRefused("max_wait", retry_after) from None
            raise
        finally:
            place.waited_s += loop.time() - began

    def release(self, name: str) -> None:
        """Gives a slot of `name` back: to the first call in fair order that may use it
        (the normal class first; across models, the one nearest its model's virtual
        time), else to the upstream."""
        if name not in self._limits:
            return
        while self._waiting_for[name]:
            chosen = self._first_for(name)
            if chosen is None:  # cannot happen while the counts are right
                break
            model, line, key, queue, waiter = chosen
            queue.waiting.remove(waiter)
            if waiter.future.done():  # cancelled, its task not yet run: it leaves
                self._gone(model, line, key, queue, waiter)
                continue
            line.virtual = max(line.virtual, waiter.start)
            self._gone(model, line, key, queue, waiter)
            waiter.future.set_result(name)  # the slot changes hands; in_flight stays
            return
        self.in_flight[name] -= 1

    def depth(self, model: str, team: str) -> int:
        line = self._lines.get(model)
        return 0 if line is None else _depth(line, team)

    def _first_for(self, name: str) -> tuple[str, _Line, tuple[str, bool], _Queue, _Waiter] | None:
        best: tuple[bool, float, int] | None = None
        chosen = None
        for model, line in self._lines.items():
            for key, queue in line.queues.items():
                # The first of the queue (in tag order) that may use the upstream.
                waiter = next((w for w in queue.waiting if name in w.eligible), None)
                if waiter is None:
                    continue
                rank = (key[1], waiter.start - line.virtual, waiter.order)
                if best is None or rank < best:
                    best, chosen = rank, (model, line, key, queue, waiter)
        return chosen

    def _leave(
        self, model: str, line: _Line, key: tuple[str, bool], queue: _Queue, waiter: _Waiter
    ) -> None:
        try:
            queue.waiting.remove(waiter)
        except ValueError:
            return  # already taken out by a release
        if waiter.charged:
            # It was never served: its queue is not charged for it. The calls after it
            # move up by its cost (never below the model's virtual time).
            cost = 1.0 / queue.share
            for later in queue.waiting:
                if later.start > waiter.start:
                    later.start = later.place.start = max(line.virtual, later.start - cost)
            queue.finish = max(line.virtual, queue.finish - cost)
        self._gone(model, line, key, queue, waiter)

    def _gone(
        self, model: str, line: _Line, key: tuple[str, bool], queue: _Queue, waiter: _Waiter
    ) -> None:
        line.waiting -= 1
        for name in waiter.eligible:
            self._waiting_for[name] -= 1
        self._on_depth(model, key[0], -1)
        if not line.waiting:
            # The end of the model's busy period: no past is owed (SFQ's virtual time moves
            # to the largest finish tag), and no queue needs remembering.
            line.virtual = max([line.virtual, *(q.finish for q in line.queues.values())])
            line.queues.clear()
        elif not queue.waiting and queue.finish <= line.virtual:
            del line.queues[key]  # nothing to remember: its next call starts at V anyway


def _depth(line: _Line, team: str) -> int:
    """The calls a team has waiting for the model, both classes."""
    return sum(
        len(queue.waiting)
        for klass in (False, True)
        if (queue := line.queues.get((team, klass))) is not None
    )


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
