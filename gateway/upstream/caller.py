"""The upstream stage: pick an upstream, call it, and on a retryable failure try another,
within the request's attempt limit, its deadline and the gateway's retry budget, with
jittered backoff that honours the upstream's Retry-After. Every attempt's outcome feeds
passive health. An attempt first takes a connection of the upstream's pool (see `pool`),
held until the answer is read or the stream closed; waiting for one when the pool is full
is the gateway's own backpressure, never held against the upstream.

Only failures before anything reached the client are retried: a whole answer not yet
read, or a stream before its first event. A try that timed out (the upstream's
`first_byte`, or `idle` before the answer is committed) is retried on an upstream this
call has not tried yet; every try waits at most what is left of `retries.deadline_s`, so
a call whose upstreams all hang ends at the deadline, not after attempts x first_byte.
When every attempt failed, the client gets the last failure (503, or 504 after a
timeout), whose message names no upstream secret.

Before its connection, an attempt takes a slot of the upstream's capacity
(`max_in_flight`, see `capacity`), held as long as the connection; when every upstream the
attempt may use is at capacity it waits in its team's line for the first slot freed on any
of them, and a wait that cannot be had is answered 503 `model_overloaded` (never retried,
never held against an upstream).
"""

from __future__ import annotations

import asyncio
import random
import time

from gateway.config import RetryConfig
from gateway.errors import UpstreamBusy
from gateway.observability.metrics import GatewayMetrics
from gateway.routing import (
    AttemptSpan,
    CallRecord,
    CallTrace,
    Claimant,
    Route,
    SpanValue,
    Translation,
    UpstreamTarget,
)
from gateway.upstream.balance import Balancer
from gateway.upstream.capacity import Capacity, Place, QueueRefused
from gateway.upstream.client import AttemptFailed, JsonAnswer, StreamAnswer, UpstreamClient
from gateway.upstream.health import HealthBook
from gateway.upstream.pool import ConnectionPool, PoolTimeout
from gateway.upstream.retry import RetryBudget, backoff_s


class UpstreamCaller:
    def __init__(
        self,
        client: UpstreamClient,
        health: HealthBook,
        config: RetryConfig,
        metrics: GatewayMetrics,
        rng: random.Random | None = None,
        budget: RetryBudget | None = None,
        capacity: Capacity | None = None,
    ) -> None:
        self._client = client
        self._health = health
        self._config = config
        self._metrics = metrics
        self._rng = rng or random.Random()  # noqa: S311 (jitter, not secrecy)
        self._capacity = capacity = Capacity({}) if capacity is None else capacity
        self._balancer = Balancer(
            health,
            self._rng,
            lambda name: client.pools[name].has_free and capacity.has_free(name),
        )
        # The whole process's budget: each configuration's caller is given the same one.
        self.budget = RetryBudget(config) if budget is None else budget

    @property
    def ready(self) -> bool:
        return self._client.ready

    async def call(
        self,
        route: Route,
        translation: Translation,
        stream: bool,
        request_id: str,
        record: CallRecord,
        claimant: Claimant | None = None,
        trace: CallTrace | None = None,
    ) -> JsonAnswer | StreamAnswer:
        """The answer of the first attempt that succeeds; raises the last failure's
        GatewayError. `record` names the upstream and attempt of each try as it starts,
        and how long the call waited for capacity; `claimant` is whose line it waits in
        (None: the gateway's own, as for a safety check without a team); `trace`, when
        the request is traced, gets a span for each attempt and for a wait in line."""
        self.budget.active_calls += 1
        place = Place(claimant or _GATEWAY, route.model)
        try:
            answer = await self._attempts(
                route, translation, stream, request_id, record, place, trace
            )
        except BaseException:
            self.budget.active_calls -= 1
            raise
        finally:
            if place.start is not None:  # it waited in line
                record.queue_wait_ms = round(place.waited_s * 1000, 3)
        if isinstance(answer, StreamAnswer):
            answer.on_close.append(self._call_ended)
        else:
            self.budget.active_calls -= 1
        return answer

    def _call_ended(self) -> None:
        self.budget.active_calls -= 1

    async def _attempts(
        self,
        route: Route,
        translation: Translation,
        stream: bool,
        request_id: str,
        record: CallRecord,
        place: Place,
        trace: CallTrace | None,
    ) -> JsonAnswer | StreamAnswer:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._config.deadline_s
        tried: set[str] = set()
        attempt = 0
        # Before a retry, its backoff; the retry then holds a slot of the budget until it
        # ends, however it ends (the client may leave during the backoff).
        backoff: float | None = None
        retry_reason = ""  # why the attempt is a retry, for its span
        while True:
            attempt += 1
            try:
                if backoff is not None:
                    await asyncio.sleep(backoff)
                target = self._balancer.pick(route, tried)
                if not self._capacity.try_take(target.upstream_name):
                    target = await self._wait_for_capacity(route, tried, place, deadline, trace)
                tried.add(target.upstream_name)
                record.upstream, record.attempts = target.upstream_name, attempt
                started = self._health.now()
                span = None if trace is None else trace.attempt(target, attempt)
                answer = await self._attempt(
                    target, route, translation, stream, request_id, deadline, span, retry_reason
                )
            except AttemptFailed as failed:
                failure = failed
            else:
                self._health.record_success(target.upstream_name, started)
                return answer
            finally:
                if backoff is not None:
                    self.budget.release()
            if failure.unhealthy and self._health.record_failure(target.upstream_name, started):
                self._metrics.ejections.labels(upstream=target.upstream_name).inc()
            backoff = self._retry_backoff(
                failure, attempt, route, tried, deadline - loop.time(), record
            )
            if backoff is None:
                raise failure.error
            retry_reason = _reason(failure)

    def _retry_backoff(
        self,
        failure: AttemptFailed,
        attempts: int,
        route: Route,
        tried: set[str],
        remaining_s: float,
        record: CallRecord,
    ) -> float | None:
        """How long to wait before retrying after `attempts` tries, taking a slot of the
        retry budget; None when the failure is the call's answer."""
        if not failure.retryable or attempts >= self._config.max_attempts:
            return None
        if failure.timed_out and all(t.upstream_name in tried for t in route.targets):
            return None  # the same hung upstream again would only double the wait
        if (
            failure.retry_after_s is not None
            and failure.retry_after_s > self._config.max_retry_after_s
        ):
            return None  # the client is better told to come back later
        wait = backoff_s(attempts, self._config, self._rng, failure.retry_after_s)
        if wait >= remaining_s:
            return None  # no room left for another try: the client learns it now
        if not self.budget.try_acquire():
            self._metrics.retries_refused.labels(model=route.model).inc()
            return None
        self._metrics.retries.labels(
            model=route.model, upstream=record.upstream or "", reason=_reason(failure)
        ).inc()
        return wait

    async def _wait_for_capacity(
        self,
        route: Route,
        tried: set[str],
        place: Place,
        deadline: float,
        trace: CallTrace | None,
    ) -> UpstreamTarget:
        """A slot on one of the upstreams this attempt may use (the picked one was full:
        another may be free, or unbounded), else the first freed on any of them, waiting
        in line (at most the claimant's `max_wait` over the whole call, never past its
        deadline); the target whose slot it got. A wait that cannot be had is the call's
        answer."""
        candidates = {t.upstream_name: t for t in self._balancer.candidates(route, tried)}
        loop = asyncio.get_running_loop()
        team = place.claimant.team
        # The wait is the call's, over all its attempts.
        until = min(loop.time() + place.claimant.max_wait_s - place.waited_s, deadline)
        waited = place.waited_s
        span = None if trace is None else trace.queue_wait()
        outcome = "abandoned"  # the client left while it waited
        try:
            name = await self._capacity.take(place, list(candidates), until)
            outcome = "served"
        except QueueRefused as refused:
            outcome = refused.reason
            self._metrics.queue_rejected.labels(route.model, team, refused.reason).inc()
            raise refused.error() from None
        finally:
            wait = self._metrics.child(self._metrics.queue_wait, route.model, team)
            wait.observe(place.waited_s - waited)
            if span is not None:
                span.end(**{"llm_gateway.queue.outcome": outcome})
        return candidates[name]

    async def _attempt(
        self,
        target: UpstreamTarget,
        route: Route,
        translation: Translation,
        stream: bool,
        request_id: str,
        deadline: float,
        span: AttemptSpan | None,
        retry_reason: str,
    ) -> JsonAnswer | StreamAnswer:
        """One attempt, holding the capacity slot it was given (see `_attempts`) and a
        connection of the pool until its answer is read or its stream closed; its span,
        when traced, ends when its answer is committed to (a stream's first event) or it
        failed, and names why it was a retry."""
        translator = target.dialect.stream_translator(include_usage=True) if stream else None
        name = target.upstream_name
        state = self._health.state[name]
        pool = self._client.pools[name]
        capacity = self._capacity
        state.outstanding += 1
        try:
            if not pool.try_acquire():
                await self._wait_for_connection(name, pool, deadline)
        except BaseException as failure:
            state.outstanding -= 1
            capacity.release(name)
            if span is not None:
                span.end(**_failed_attempt(failure, retry_reason))
            raise
        duration = self._metrics.upstream_attempt_duration
        started = time.perf_counter()
        try:
            answer = await self._client.attempt(
                target,
                translation.body_for(target),
                request_id,
                route.model,
                translator,
                stream,
                deadline,
                b"" if span is None else span.headers,
            )
        except BaseException as failure:
            state.outstanding -= 1
            pool.release()
            capacity.release(name)
            self._metrics.child(duration, name, "error").observe(time.perf_counter() - started)
            if span is not None:
                span.end(**_failed_attempt(failure, retry_reason))
            raise
        self._metrics.child(duration, name, "ok").observe(time.perf_counter() - started)
        if isinstance(answer, StreamAnswer):
            # The connection first: the next call in line for the slot then finds it free.
            answer.on_close += (state.ended, pool.release, lambda: capacity.release(name))
        else:
            state.outstanding -= 1
            pool.release()
            capacity.release(name)
        if span is not None:  # after the releases: nothing above depends on tracing
            span.end(**_attempt_ended("ok", retry_reason, 200))
        return answer

    async def _wait_for_connection(self, name: str, pool: ConnectionPool, deadline: float) -> None:
        """Waits for a connection of the upstream's full pool, at most its `pool_timeout`
        and never past the call's deadline; a wait that runs out fails the attempt as
        busy, which is not held against the upstream (nor retried: every upstream of the
        model was as full when it was picked, see `Balancer`)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        waits = self._metrics.upstream_pool_waits
        try:
            await pool.acquire(min(started + pool.timeout, deadline))
        except PoolTimeout:
            waits.labels(name, "timed_out").observe(loop.time() - started)
            raise AttemptFailed(
                UpstreamBusy(
                    "The gateway's own connections to the upstream are all in use (its "
                    "connection pool is full; the upstream did not fail). Retry later."
                ),
                retryable=False,
                unhealthy=False,
            ) from None
        except BaseException:
            waits.labels(name, "abandoned").observe(loop.time() - started)
            raise
        self._metrics.child(waits, name, "acquired").observe(loop.time() - started)


# The line of calls made for no team (a safety check's own call has its team's); no
# configured team can have this name.
_GATEWAY = Claimant(team="(gateway)")


def _reason(failure: AttemptFailed) -> str:
    status = failure.error.status
    if status == 429:
        return "rate_limited"
    if status == 504:
        return "timeout"
    return "unavailable"


def _failed_attempt(failure: BaseException, retry_reason: str) -> dict[str, SpanValue]:
    """A failed attempt's span attributes: what failed (the error code the gateway would
    answer with, and the upstream's status when it answered), never its message, which
    may quote what the upstream was sent."""
    if not isinstance(failure, AttemptFailed):  # the client left, or the process stops
        return _attempt_ended("abandoned", retry_reason, None)
    error = failure.error
    attributes = _attempt_ended("failed", retry_reason, error.upstream_status)
    attributes["error.type"] = type(error).__name__
    return attributes


def _attempt_ended(outcome: str, retry_reason: str, status: int | None) -> dict[str, SpanValue]:
    attributes: dict[str, SpanValue] = {"llm_gateway.attempt.outcome": outcome}
    if retry_reason:
        attributes["llm_gateway.retry.reason"] = retry_reason
    if status is not None:
        attributes["http.response.status_code"] = status
    return attributes
