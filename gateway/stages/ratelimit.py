"""Rate-limit stage: a team's requests per minute, tokens per minute and concurrent
requests, optionally narrower per model, decided in one backend call per request.

Before the call, the request reserves its estimated tokens (see `accounting`), takes a
concurrency lease and, when tokens are limited, a ticket; after it, `settle` gives the
lease back and charges the real usage instead of the estimate. `settle` only records the
settlement, in this process, as unconfirmed, and never waits.

Unconfirmed settlements reach the backend two ways, whichever comes first:
- riding in the same team's next admission, which applies them before its checks (one
  call, no extra round trip): a request admitted by this process is always decided against
  every request of its team that finished here before it started;
- a background flush `_SETTLE_DELAY_S` later, one call per team for a whole batch, for teams
  with no next request: leases come back and other replicas see the charge. It happens even
  when the client has left and the request's own task is cancelled, and adds nothing to the
  answer's latency.
A settlement stays unconfirmed until a call that carried it succeeded, and rides in every
call until then: a flush still in flight (or lost to a timeout) cannot let a later
admission overtake it. (Within one pipelined batch only the first call carries it, as the
others run after it on the same connection: see `limiter.nodes`.) Settlement is idempotent
(tickets, see `limiter.base`), so carrying one twice is safe. A failed flush is retried; a
settlement whose leases and ticket have expired anyway is dropped. The unconfirmed
settlements live in `Settlements`, one per process, which every generation of this stage
shares: a reload builds a new stage (new limits) and loses none of them, and a request
admitted before it settles into the queue the new stage's admissions carry.

An admission abandoned before its answer (deadline missed, task cancelled) may still have
run on Redis: its lease and reservation are given back anyway, by a settlement recorded
once the call's deadline has passed, after which Redis no longer lets that call take
anything (see `limiter.redis`), so the release cannot be overtaken by the admission.

Answers: 429 `rate_limit_exceeded` naming the limit, with `Retry-After`; OpenAI's
`x-ratelimit-*` headers on every response of a limited team. When the backend cannot
decide in time, `failure_mode` admits (logging once per interval) or refuses with 503.
"""

from __future__ import annotations

import asyncio
import functools
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from structlog.typing import FilteringBoundLogger

from gateway.accounting import reserved_tokens
from gateway.config import GatewayConfig, TeamLimits
from gateway.errors import RateLimited, UpstreamUnavailable
from gateway.limiter.base import (
    CheckResult,
    LimitCheck,
    LimiterBackend,
    LimiterUnavailable,
    LimitKind,
    Settlement,
    TokenAdjustment,
)
from gateway.limiter.slices import LocalTake, SliceBook, SliceEntry, SlicePlan
from gateway.observability.metrics import GatewayMetrics
from gateway.pipeline import Exchange, Stage, need
from gateway.tasks import BackgroundTasks

# A lease outlives the longest call it can cover by this much; after that it frees itself.
_LEASE_SLACK_MS = 60_000
# How long finished requests wait to be flushed together, and the most in one batch.
_SETTLE_DELAY_S = 0.005
_SETTLE_BATCH = 64
# After a failed flush, the team's settlements are sent again this much later (meanwhile
# its admissions carry them).
_RETRY_DELAY_S = 0.25
# Unconfirmed settlements kept per team at most (a long Redis outage); the oldest go first,
# and their leases expire by themselves.
_MAX_UNCONFIRMED = 1024
# Between this stage reading the clock before an admission and the backend reading it to
# set the call's deadline: a release recorded this long after the deadline is sure to come
# after it.
_RELEASE_MARGIN_S = 0.01


@dataclass(frozen=True, slots=True)
class _Layer:
    """The limits of one scope (the team, or the team on one model) and their keys."""

    requests: int | None
    tokens: int | None
    concurrency: int | None
    key: str

    def checks(self, tokens: int) -> list[LimitCheck]:
        out = []
        if self.requests is not None:
            out.append(LimitCheck(LimitKind.REQUESTS, f"{self.key}:rpm", self.requests))
        if self.tokens is not None:
            out.append(LimitCheck(LimitKind.TOKENS, f"{self.key}:tpm", self.tokens, tokens))
        if self.concurrency is not None:
            out.append(LimitCheck(LimitKind.CONCURRENCY, f"{self.key}:inflight", self.concurrency))
        return out


@dataclass(frozen=True, slots=True)
class _Budget:
    layers: tuple[_Layer, ...]
    lease_ttl_ms: int
    # Where admitted requests of the team get their ticket; None when no token is limited
    # (nothing to reconcile, and releasing a lease is idempotent by itself).
    ticket_key: str | None
    # Its limits as budget slices see them; None without slices (see `limiter.slices`).
    plan: SlicePlan | None = None


@dataclass(slots=True)
class Admission:
    """What a request holds after admission, until it is settled."""

    lease_id: str
    lease_keys: list[str]
    token_checks: list[LimitCheck]
    reserved_tokens: int
    headers: dict[str, str] = field(default_factory=dict)
    ticket_key: str | None = None
    # How long the backend keeps the lease and the ticket (ms).
    lease_ttl_ms: int = _LEASE_SLACK_MS
    # Admitted from budget slices, in this process (no lease id, keys or ticket in Redis).
    local: LocalTake | None = None


@dataclass(slots=True)
class _Unconfirmed:
    """A team's settlements that no successful backend call has carried yet, by lease id
    (insertion order: oldest first), each with the monotonic time after which it is moot
    (its leases and ticket have expired)."""

    settlements: dict[str, tuple[Settlement, float]] = field(default_factory=dict)
    # Recorded since a flush last took the team's settlements.
    fresh: int = 0
    retrying: bool = False

    def carry(self, now: float) -> list[Settlement]:
        moot = [lease for lease, (_, until) in self.settlements.items() if until <= now]
        for lease in moot:
            del self.settlements[lease]
        return [settlement for settlement, _ in self.settlements.values()]

    def confirm(self, carried: list[Settlement]) -> None:
        for settlement in carried:
            entry = self.settlements.get(settlement.lease_id)
            if entry is not None and entry[0] is settlement:
                del self.settlements[settlement.lease_id]


@dataclass(slots=True)
class Settlements:
    """The settlements no backend call has confirmed yet, by team, and the flushes that
    deliver them: shared by the stage's generations (see the module docstring)."""

    by_team: dict[str, _Unconfirmed] = field(default_factory=dict)
    flush_scheduled: bool = False
    last_warning: float = -math.inf

    def of(self, team: str) -> _Unconfirmed:
        unconfirmed = self.by_team.get(team)
        if unconfirmed is None:  # a team's first request since the process (or it) began
            unconfirmed = self.by_team[team] = _Unconfirmed()
        return unconfirmed


class RateLimitStage(Stage):
    """Reads: `team`, `route`, `fitted` (the reservation). Writes: `admission`; on the way
    out, settles it with what the request really used."""

    name = "rate_limit"

    def __init__(
        self,
        config: GatewayConfig,
        backend: LimiterBackend,
        tasks: BackgroundTasks,
        log: FilteringBoundLogger,
        metrics: GatewayMetrics,
        settlements: Settlements | None = None,
    ) -> None:
        self._backend = backend
        self._tasks = tasks
        self._log = log
        self._metrics = metrics
        self._default_max_tokens = config.rate_limits.default_max_tokens
        self._fail_open = config.rate_limits.failure_mode == "open"
        self._warn_interval = config.rate_limits.warn_interval_s
        self._budgets: dict[tuple[str, str], _Budget] = {}
        # The backend's budget slices, shared by every generation (None: one call each).
        book = getattr(backend, "slices", None)
        self._book = book if isinstance(book, SliceBook) else None
        # Not written here: a reload builds the stage off the event loop.
        self._shared = Settlements() if settlements is None else settlements
        prefix = config.rate_limits.key_prefix
        for team_name, team in config.teams.items():
            for model_name, model in config.models.items():
                # The hash tag keeps all of a team's keys in one Redis Cluster slot.
                team_key = f"{prefix}:{{{team_name}}}"
                layers = [_layer(team.limits, team_key)]
                if model_name in team.model_limits:
                    layers.append(
                        _layer(team.model_limits[model_name], f"{team_key}:m:{model_name}")
                    )
                layers = [layer for layer in layers if layer.checks(1)]
                if layers:
                    longest = max(
                        config.upstreams[target.upstream].timeouts.total
                        for target in model.upstreams
                    )
                    tokens = any(layer.tokens is not None for layer in layers)
                    lease_ttl_ms = int(longest * 1000) + _LEASE_SLACK_MS
                    plan = None
                    if self._book is not None:
                        entries = tuple(
                            SliceEntry(c.kind, c.key, c.limit, c.period_ms)
                            for layer in layers
                            for c in layer.checks(1)
                        )
                        plan = SlicePlan(entries, f"{team_key}:tickets", lease_ttl_ms)
                    self._budgets[team_name, model_name] = _Budget(
                        tuple(layers),
                        lease_ttl_ms,
                        f"{team_key}:tickets" if tokens else None,
                        plan,
                    )

    async def enter(self, exchange: Exchange) -> None:
        fitted = need(exchange.fitted, "the request")
        reservation = reserved_tokens(
            fitted.request, fitted.prompt_tokens, self._default_max_tokens
        )
        exchange.admission = await self.admit(
            need(exchange.team, "the team").name,
            need(exchange.route, "the route").model,
            reservation,
        )

    def leave(self, exchange: Exchange) -> None:
        if exchange.admission is not None and exchange.team is not None:
            usage = exchange.usage
            used = 0 if usage is None else usage.prompt_tokens + usage.completion_tokens
            self.settle(exchange.team.name, exchange.admission, used)

    async def admit(self, team: str, model: str, tokens: int) -> Admission | None:
        """Admit or raise RateLimited; None for a team without limits on this model."""
        budget = self._budgets.get((team, model))
        if budget is None:
            return None
        plan, book = budget.plan, self._book
        if plan is not None and book is not None:
            # From this process's slices, when they have room: no Redis call, no await.
            taken = book.take(plan, tokens)
            if taken is not None:
                return Admission(
                    "",
                    [],
                    [],
                    tokens,
                    _slice_headers(taken),
                    lease_ttl_ms=budget.lease_ttl_ms,
                    local=taken,
                )
        checks = [check for layer in budget.layers for check in layer.checks(tokens)]
        lease_id = secrets.token_hex(8)
        started = time.monotonic()
        unconfirmed = self._shared.of(team)
        carried = unconfirmed.carry(started)
        admission = Admission(
            lease_id=lease_id,
            lease_keys=[c.key for c in checks if c.kind is LimitKind.CONCURRENCY],
            token_checks=[c for c in checks if c.kind is LimitKind.TOKENS],
            reserved_tokens=tokens,
            ticket_key=budget.ticket_key,
            lease_ttl_ms=budget.lease_ttl_ms,
        )
        try:
            results = await self._backend.admit(
                checks,
                lease_id,
                budget.lease_ttl_ms,
                ticket_key=budget.ticket_key,
                settlements=carried,
            )
        except LimiterUnavailable as unavailable:
            if unavailable.may_have_run:
                self._give_back(team, admission, started)
            return self._unavailable(team, str(unavailable))
        except asyncio.CancelledError:
            self._give_back(team, admission, started)
            raise
        unconfirmed.confirm(carried)
        if plan is not None and book is not None:
            # What Redis has left decides whether slices are taken.
            book.observe(plan, [r.remaining for r in results], tokens)
        admission.headers = _headers(checks, results)
        refused = [(c, r) for c, r in zip(checks, results, strict=True) if not r.allowed]
        if refused:
            check, result = refused[0]
            self._metrics.rate_limited.labels(team=team, model=model, limit=check.kind).inc()
            raise _too_many(team, check, result, admission.headers)
        return admission

    def settle(self, team: str, admission: Admission, used_tokens: int) -> None:
        """Release the lease and charge `used_tokens` instead of the reservation; the next
        admission of the team in this process sees it, other replicas a flush later."""
        delta = used_tokens - admission.reserved_tokens
        if admission.local is not None and self._book is not None:
            # Into its slices while they are live; to Redis (once) what cannot go there.
            for settlement in self._book.settle(admission.local, delta):
                self._record(team, settlement, admission.lease_ttl_ms)
            return
        adjustments = tuple(
            TokenAdjustment(c.key, c.limit, delta, c.period_ms)
            for c in admission.token_checks
            if delta
        )
        if not admission.lease_keys and admission.ticket_key is None:
            return  # nothing held (a ticket is closed even when usage matched the estimate)
        self._record(
            team,
            Settlement(
                admission.lease_id, admission.ticket_key, tuple(admission.lease_keys), adjustments
            ),
            admission.lease_ttl_ms,
        )

    def _give_back(self, team: str, admission: Admission, started: float) -> None:
        """An abandoned admission may still take its lease and reservation on the backend:
        give both back, once the call's deadline has passed (a backend call cannot take
        anything after it, so the release is not overtaken)."""
        settle = functools.partial(self.settle, team, admission, 0)
        wait = started + self._backend.call_deadline_s + _RELEASE_MARGIN_S - time.monotonic()
        if wait <= 0:
            settle()
        else:
            self._tasks.spawn(_after(wait, settle), name="release-abandoned")

    def _record(self, team: str, settlement: Settlement, ttl_ms: int) -> None:
        unconfirmed = self._shared.of(team)
        entries = unconfirmed.settlements
        entries[settlement.lease_id] = (settlement, time.monotonic() + ttl_ms / 1000)
        if len(entries) > _MAX_UNCONFIRMED:
            del entries[next(iter(entries))]
        unconfirmed.fresh += 1
        if unconfirmed.fresh >= _SETTLE_BATCH:
            self._tasks.spawn(self._flush(team), name="settle")
        elif not self._shared.flush_scheduled:
            self._shared.flush_scheduled = True
            self._tasks.spawn(self._flush_soon(), name="settle-soon")

    async def _flush_soon(self) -> None:
        await asyncio.sleep(_SETTLE_DELAY_S)
        self._shared.flush_scheduled = False
        teams = [team for team, unconfirmed in self._shared.by_team.items() if unconfirmed.fresh]
        await asyncio.gather(*(self._flush(team) for team in teams))

    async def _flush(self, team: str) -> None:
        unconfirmed = self._shared.of(team)
        unconfirmed.fresh = 0
        batch = unconfirmed.carry(time.monotonic())
        if not batch:
            return
        try:
            await self._backend.settle(batch)
        except LimiterUnavailable as unavailable:
            # Kept, and carried by the team's next admission or the retry, whichever first.
            self._warn(str(unavailable))
            if not unconfirmed.retrying:
                unconfirmed.retrying = True
                self._tasks.spawn(self._retry(team), name="settle-retry")
            return
        unconfirmed.confirm(batch)

    async def _retry(self, team: str) -> None:
        await asyncio.sleep(_RETRY_DELAY_S)
        self._shared.of(team).retrying = False
        await self._flush(team)

    def _unavailable(self, team: str, reason: str) -> Admission | None:
        self._metrics.limiter_errors.inc()
        self._warn(reason)
        if self._fail_open:
            self._metrics.limiter_fail_open.inc()
            return None
        raise UpstreamUnavailable(
            "The rate limiter is unavailable and this gateway is set to refuse requests "
            "until it is back.",
            code="rate_limiter_unavailable",
        )

    def _warn(self, reason: str) -> None:
        now = time.monotonic()
        if now - self._shared.last_warning >= self._warn_interval:
            self._shared.last_warning = now
            self._log.warning(
                "rate_limiter_unavailable",
                reason=reason,
                failure_mode="open" if self._fail_open else "closed",
            )


async def _after(seconds: float, action: Callable[[], None]) -> None:
    await asyncio.sleep(seconds)
    action()


def _layer(limits: TeamLimits, key: str) -> _Layer:
    return _Layer(limits.requests_per_minute, limits.tokens_per_minute, limits.max_concurrent, key)


def _headers(checks: list[LimitCheck], results: list[CheckResult]) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers, from the tightest limit of each kind."""
    headers: dict[str, str] = {}
    for kind in (LimitKind.REQUESTS, LimitKind.TOKENS):
        pairs = [(c, r) for c, r in zip(checks, results, strict=True) if c.kind is kind]
        if not pairs:
            continue
        check, result = min(pairs, key=lambda pair: pair[1].remaining)
        headers[f"x-ratelimit-limit-{kind}"] = str(check.limit)
        headers[f"x-ratelimit-remaining-{kind}"] = str(result.remaining)
        headers[f"x-ratelimit-reset-{kind}"] = format_duration(result.reset_ms)
    return headers


def _slice_headers(taken: LocalTake) -> dict[str, str]:
    """The x-ratelimit-* headers of a request admitted from slices: per kind, the tightest
    limit's remaining as this process sees it (what Redis reported at the last slice or
    admission, plus what its slices hold)."""
    headers: dict[str, str] = {}
    for kind, name in ((LimitKind.REQUESTS, "requests"), (LimitKind.TOKENS, "tokens")):
        tightest = -1
        limit = period = 0
        for state in taken.states:
            if state.kind is kind:
                left = state.view()
                if tightest < 0 or left < tightest:
                    tightest, limit, period = left, state.limit, state.period_ms
        if tightest >= 0:
            headers[f"x-ratelimit-limit-{name}"] = str(limit)
            headers[f"x-ratelimit-remaining-{name}"] = str(tightest)
            spent = max(limit - tightest, 0)
            headers[f"x-ratelimit-reset-{name}"] = format_duration(spent * period // limit)
    return headers


def _too_many(
    team: str, check: LimitCheck, result: CheckResult, headers: dict[str, str]
) -> RateLimited:
    if check.kind is LimitKind.CONCURRENCY:
        what = f"concurrent requests (limit {check.limit} in flight)"
    else:
        what = f"{check.kind} per minute (limit {check.limit})"
    if result.retry_after_ms is None:
        return RateLimited(
            f"Rate limit: this request needs {check.cost} tokens, more than team '{team}' "
            f"may use per minute ({check.limit}); lower max_tokens or the prompt.",
            headers=headers,
        )
    retry_s = max(1, math.ceil(result.retry_after_ms / 1000))
    return RateLimited(
        f"Rate limit reached for team '{team}' on {what}. Retry after {retry_s}s.",
        headers={
            **headers,
            "Retry-After": str(retry_s),
            "retry-after-ms": str(result.retry_after_ms),
        },
    )


def format_duration(ms: int) -> str:
    """OpenAI's reset format: '20ms', '1.5s', '6m0s'."""
    if ms < 1000:
        return f"{ms}ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:g}s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{rest:g}s"
