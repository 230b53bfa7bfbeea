"""Rate-limit stage: a team's requests per minute, tokens per minute and concurrent
requests, optionally narrower per model, decided in one backend call per request.

Before the call, the request reserves its estimated tokens (see `accounting`), takes a
concurrency lease and, when tokens are limited, a ticket (settlement is idempotent, see
`limiter.base`); after it, `settle` gives the lease back and charges the real usage
instead of the estimate. Settling runs in the background, so it happens even when the
client has left and the request's own task is cancelled, and it adds nothing to the
answer's latency. Settlements are batched for a few milliseconds (one backend call per
team per batch instead of one per request), which halves the Redis round trips of a
limited request; a lease is returned at most `_SETTLE_DELAY_S` late.

Answers: 429 `rate_limit_exceeded` naming the limit, with `Retry-After`; OpenAI's
`x-ratelimit-*` headers on every response of a limited team. When the backend cannot
decide in time, `failure_mode` admits (logging once per interval) or refuses with 503.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from dataclasses import dataclass, field

from structlog.typing import FilteringBoundLogger

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
from gateway.observability.metrics import GatewayMetrics
from gateway.tasks import BackgroundTasks

# A lease outlives the longest call it can cover by this much; after that it frees itself.
_LEASE_SLACK_MS = 60_000
# How long finished requests wait to be settled together, and the most in one batch.
_SETTLE_DELAY_S = 0.005
_SETTLE_BATCH = 64


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


@dataclass(slots=True)
class Admission:
    """What a request holds after admission, until it is settled."""

    lease_id: str
    lease_keys: list[str]
    token_checks: list[LimitCheck]
    reserved_tokens: int
    headers: dict[str, str] = field(default_factory=dict)
    ticket_key: str | None = None


class RateLimitStage:
    def __init__(
        self,
        config: GatewayConfig,
        backend: LimiterBackend,
        tasks: BackgroundTasks,
        log: FilteringBoundLogger,
        metrics: GatewayMetrics,
    ) -> None:
        self._backend = backend
        self._tasks = tasks
        self._log = log
        self._metrics = metrics
        self._fail_open = config.rate_limits.failure_mode == "open"
        self._warn_interval = config.rate_limits.warn_interval_s
        self._last_warning = -math.inf
        self._budgets: dict[tuple[str, str], _Budget] = {}
        self._pending: dict[str, list[Settlement]] = {}
        self._flush_scheduled = False
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
                    self._budgets[team_name, model_name] = _Budget(
                        tuple(layers),
                        int(longest * 1000) + _LEASE_SLACK_MS,
                        f"{team_key}:tickets" if tokens else None,
                    )

    async def admit(self, team: str, model: str, tokens: int) -> Admission | None:
        """Admit or raise RateLimited; None for a team without limits on this model."""
        budget = self._budgets.get((team, model))
        if budget is None:
            return None
        checks = [check for layer in budget.layers for check in layer.checks(tokens)]
        lease_id = secrets.token_hex(8)
        try:
            results = await self._backend.admit(
                checks, lease_id, budget.lease_ttl_ms, ticket_key=budget.ticket_key
            )
        except LimiterUnavailable as unavailable:
            return self._unavailable(team, str(unavailable))
        headers = _headers(checks, results)
        refused = [(c, r) for c, r in zip(checks, results, strict=True) if not r.allowed]
        if refused:
            check, result = refused[0]
            self._metrics.rate_limited.labels(team=team, model=model, limit=check.kind).inc()
            raise _too_many(team, check, result, headers)
        return Admission(
            lease_id=lease_id,
            lease_keys=[c.key for c in checks if c.kind is LimitKind.CONCURRENCY],
            token_checks=[c for c in checks if c.kind is LimitKind.TOKENS],
            reserved_tokens=tokens,
            headers=headers,
            ticket_key=budget.ticket_key,
        )

    def settle(self, team: str, admission: Admission, used_tokens: int) -> None:
        """Release the lease and charge `used_tokens` instead of the reservation."""
        delta = used_tokens - admission.reserved_tokens
        adjustments = tuple(
            TokenAdjustment(c.key, c.limit, delta, c.period_ms)
            for c in admission.token_checks
            if delta
        )
        if not admission.lease_keys and not adjustments:
            return
        batch = self._pending.setdefault(team, [])
        batch.append(
            Settlement(
                admission.lease_id, admission.ticket_key, tuple(admission.lease_keys), adjustments
            )
        )
        if len(batch) >= _SETTLE_BATCH:
            self._tasks.spawn(self._flush(team, self._pending.pop(team)), name="settle")
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self._tasks.spawn(self._flush_soon(), name="settle-soon")

    async def _flush_soon(self) -> None:
        await asyncio.sleep(_SETTLE_DELAY_S)
        self._flush_scheduled = False
        pending, self._pending = self._pending, {}
        await asyncio.gather(*(self._flush(team, batch) for team, batch in pending.items()))

    async def _flush(self, team: str, batch: list[Settlement]) -> None:
        try:
            await self._backend.settle(batch)
        except LimiterUnavailable as unavailable:
            # The leases expire by themselves; the token differences are lost (bounded by
            # the reservations of this batch).
            self._warn(str(unavailable))

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
        if now - self._last_warning >= self._warn_interval:
            self._last_warning = now
            self._log.warning(
                "rate_limiter_unavailable",
                reason=reason,
                failure_mode="open" if self._fail_open else "closed",
            )


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
