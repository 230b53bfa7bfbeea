"""The gateway's configuration: one frozen pydantic tree, loaded from a YAML file at
start-up and again on each reload (see `reload`), which swaps in a whole new tree.

Owns the schema (server, upstreams, models, teams), the cross-reference rules between them
(a model's upstream exists, a team's model exists, aliases are unique, a key hash belongs to
one team) and the resolution of secrets: an upstream key is read from the environment
variable the file names, never from the file itself. Every problem is reported with the
exact path of the field that holds it, e.g. `teams.search.models[1]`.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote

import yaml
from pydantic import (
    AnyHttpUrl,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gateway.dialects.base import CONTRACT_PARAMETERS
from gateway.errors import field_path
from gateway.limiter.nodes import RedisTarget
from gateway.policies import Policy, compose, load_policy_files

_FROZEN = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}$")]
KeyHash = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Seconds = Annotated[float, Field(gt=0)]


class ConfigError(Exception):
    """A configuration that cannot be served, with one `path: problem` line per error."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class EnvSecret:
    """A secret read from the environment; its repr names the variable, never the value."""

    variable: str
    value: str

    def __repr__(self) -> str:
        return f"EnvSecret(variable={self.variable!r})"

    __str__ = __repr__


def _read_env_secret(variable: Any, info: ValidationInfo) -> EnvSecret | None:
    """The secret held by the environment variable named `variable` (None: no variable
    named), from the environment parse_config was given."""
    if variable is None:
        return None
    if not isinstance(variable, str) or not variable:
        raise ValueError("expected the name of an environment variable")
    environ: Mapping[str, str] = (info.context or {}).get("environ", os.environ)
    value = environ.get(variable)
    if not value:
        raise ValueError(f"environment variable {variable} is not set or empty")
    return EnvSecret(variable, value)


class ServerConfig(BaseModel):
    """The process and its listener: read once at start-up, so every setting here takes
    effect only with a restart (a reload that changes one is refused, see `reload`)."""

    model_config = _FROZEN

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    # Requests bodies above this are refused with 413 before they are read.
    max_body_bytes: Annotated[int, Field(ge=1024)] = 1024 * 1024
    # Largest single SSE event accepted from an upstream; a larger one ends the stream.
    max_event_bytes: Annotated[int, Field(ge=1024)] = 1024 * 1024
    # Largest non-streamed answer accepted from an upstream.
    max_upstream_body_bytes: Annotated[int, Field(ge=1024)] = 32 * 1024 * 1024
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["console", "json"] = "json"
    # Seconds that in-flight requests get to finish on shutdown.
    shutdown_timeout: Seconds = 30.0
    # A connection whose request headers are not complete this long after it opened (or
    # after the first byte of its next request) is closed: slow-header clients (slowloris)
    # cannot hold connections. Real clients send their headers in one packet.
    header_timeout_s: Seconds = 10.0
    # A request body not complete this long after its headers ends its request with 408
    # and closes the connection (slow-body clients). 1 MiB in 30 s is 35 KB/s.
    body_timeout_s: Seconds = 30.0
    # An idle keep-alive connection is closed after this long. Above the 60 s idle timeout
    # of common load balancers, so that the balancer, not the gateway, closes first.
    keepalive_timeout_s: Seconds = 75.0
    # Client connections this process holds at once; one more is answered 503 and closed.
    # Lowered at start-up (with a warning) when the open-files limit cannot hold it next to
    # the upstream connection pools.
    max_connections: Annotated[int, Field(ge=1)] = 4096

    @model_validator(mode="before")
    @classmethod
    def _audit_path_moved(cls, data: Any) -> Any:
        if isinstance(data, dict) and "audit_path" in data:
            raise ValueError("audit_path has moved to audit.path (the `audit:` section)")
        return data


class AuditConfig(BaseModel):
    """The audit trail: one JSON line per API request (see `stages.audit`), and what the
    gateway does when it cannot write one (see `observability.audit_trail`)."""

    model_config = _FROZEN

    # The file audit lines are appended to (created if missing; its directory must exist:
    # the gateway does not start otherwise). Absent: the log stream, whatever log_level
    # says. Restart only. SIGUSR1 makes the gateway open the path again (logrotate).
    path: Annotated[str, Field(min_length=1)] | None = None
    # While audit lines cannot be written to `path` (disk full, file removed and not
    # creatable, permission): "continue" serves requests and counts the lines lost
    # (llm_gateway_audit_write_failures_total); "refuse" answers API requests 503
    # `audit_unavailable` before any upstream or safety-model call, until a line is
    # written again (the refused requests' own lines are the probes). Requests under
    # HIPAA are refused either way: the HIPAA policy promises that every request is
    # audited, as it promises a BAA-covered upstream. "refuse" is for deployments whose
    # compliance requires every request audited (HIPAA-only gateways). Reloads.
    on_failure: Literal["continue", "refuse"] = "continue"


class UpstreamTimeouts(BaseModel):
    """How long one attempt at this upstream may wait. Until the answer is committed (a
    whole answer read, a stream's first event) a timeout is retried on another upstream,
    within `retries.deadline_s`, which also cuts every wait short; after it, only `idle`
    and `total` apply, and a stream that runs out ends with an error event."""

    model_config = _FROZEN

    # Establishing the connection (TCP and TLS). Running out of it is a failed connection,
    # retried like one (the same upstream included, as it may have been a passing
    # refusal). Waiting for a free connection of the gateway's own pool is not part of it
    # (see `pool_timeout`).
    connect: Seconds = 5.0
    # Per try (Envoy's per_try_timeout): from the attempt's start, connecting included, to
    # the response headers. Then the call goes on with another upstream, if any is left
    # untried and the deadline leaves room, or ends in 504.
    first_byte: Seconds = 60.0
    # Longest silence while reading: for the headers once the request is sent, within a
    # whole answer, before a stream's first event (each retried like first_byte), and
    # between later stream events (which ends the stream: bytes reached the client). Also
    # the longest a stream's client may take nothing of it: a write to the client waiting
    # that long ends the stream (the client's connection is closed).
    idle: Seconds = 60.0
    # One attempt from start to end, a stream's whole length included, however long its
    # client takes to read it: when it runs out the stream ends, whichever side is waited
    # on.
    total: Seconds = 600.0


class UpstreamConfig(BaseModel):
    model_config = _FROZEN

    # Restart only (a reload that changes it is refused): the upstream's pool, health and
    # metrics are its address's.
    base_url: AnyHttpUrl
    dialect: Literal["openai", "together", "vllm", "anthropic"] = "openai"
    # The name of the environment variable that holds this upstream's API key.
    api_key_env: Annotated[EnvSecret | None, Field(exclude=True)] = None
    timeouts: UpstreamTimeouts = UpstreamTimeouts()
    # Connections the gateway opens to this upstream at most (one per request in flight
    # to it, a stream's whole length included). Restart only: the pool and the process's
    # open-files budget are sized for it at start-up.
    max_connections: Annotated[int, Field(ge=1)] = 100
    # The longest a request waits for one of them when all are in use (within
    # `retries.deadline_s`); then 503 `upstream_busy`. The gateway's own backpressure:
    # never counted against the upstream's health. 5 s is the default `connect`, as
    # HAProxy's `timeout queue` defaults to its `timeout connect`: long enough to absorb a
    # burst of short answers, short enough to shed load rather than stack it.
    pool_timeout: Seconds = 5.0
    # Calls in flight from this process to the upstream at most (a stream counts until it
    # ends or its client leaves); beyond, calls wait in their team's queue (see `queue`).
    # Absent: unbounded. Per process: with R replicas of W workers, give each 1/(R*W) of
    # what the upstream serves at once. Restart only.
    max_in_flight: Annotated[int, Field(ge=1)] | None = None
    # Covered by a business associate agreement: may receive requests under HIPAA (which
    # also require https, see security.allow_plaintext_loopback_hipaa).
    hipaa_eligible: bool = False
    # PEM bundle of the CAs that sign this upstream's certificate (an internal CA);
    # without it, the system's trust store. Certificates are always verified.
    ca_file: str | None = None

    @field_validator("ca_file")
    @classmethod
    def _readable_ca(cls, path: str | None) -> str | None:
        if path is not None and not Path(path).is_file():
            raise ValueError(f"no such file: {path}")
        return path

    @field_validator("api_key_env", mode="before")
    @classmethod
    def _read_secret(cls, variable: Any, info: ValidationInfo) -> EnvSecret | None:
        return _read_env_secret(variable, info)


class ModelUpstream(BaseModel):
    model_config = _FROZEN

    upstream: Name
    # The model's name at that upstream, when it differs from the public name.
    model: str | None = None
    # Share of the model's traffic, relative to its other upstreams.
    weight: Annotated[float, Field(gt=0)] = 1.0


class ModelPrice(BaseModel):
    """What a model's tokens cost, per million, in the operator's currency (USD in the
    examples): read only by `llm-gateway usage`, never on the request path."""

    model_config = _FROZEN

    input_per_million: Annotated[float, Field(ge=0, allow_inf_nan=False)]  # prompt tokens
    output_per_million: Annotated[float, Field(ge=0, allow_inf_nan=False)]  # completion tokens


class ModelConfig(BaseModel):
    model_config = _FROZEN

    aliases: list[Name] = []
    context_window: Annotated[int, Field(ge=1)] | None = None
    owned_by: str = "llm-gateway"
    upstreams: Annotated[list[ModelUpstream], Field(min_length=1)]
    # Parameters this model's upstreams cannot honour that may be dropped instead of
    # refused with 400; a dropped parameter is named in `x-gateway-dropped-params`.
    drop_params: list[str] = []
    # What its tokens cost, for the cost column of `llm-gateway usage`; absent: the report
    # shows no cost for the model (null, not 0).
    price: ModelPrice | None = None


class TeamLimits(BaseModel):
    """A team's budget; an absent limit is no limit."""

    model_config = _FROZEN

    requests_per_minute: Annotated[int, Field(ge=1)] | None = None
    tokens_per_minute: Annotated[int, Field(ge=1)] | None = None
    max_concurrent: Annotated[int, Field(ge=1)] | None = None


_KEY_HASH = re.compile(r"[0-9a-f]{64}")
_PLAIN_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_NOT_AFTER_FORM = "expected a date (2025-03-31) or a date and time (2025-03-31T12:00:00Z)"


class TeamKey(BaseModel):
    """One key of a team: its hash and, optionally, the last moment it works."""

    model_config = _FROZEN

    hash: KeyHash
    # A date (the key works through that day, UTC) or a date and time (UTC unless it has
    # an offset); after it the key is refused like an unknown one. For rotations.
    not_after: datetime | date | None = None

    @field_validator("not_after", mode="before")
    @classmethod
    def _date_or_time(cls, value: Any) -> Any:
        # Read here rather than by pydantic's union, which would take a quoted
        # "2025-03-31" for that day's midnight (a day early) and report a bad value twice.
        if isinstance(value, str):
            try:
                if _PLAIN_DATE.fullmatch(value):
                    return date.fromisoformat(value)
                value = datetime.fromisoformat(value)
            except ValueError:
                raise ValueError(_NOT_AFTER_FORM) from None
        if isinstance(value, datetime):
            return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        if value is None or isinstance(value, date):
            return value
        raise ValueError(_NOT_AFTER_FORM)

    @property
    def refused_from(self) -> datetime | None:
        """The first instant the key is refused; None when it never is."""
        if self.not_after is None:
            return None
        if isinstance(self.not_after, datetime):
            # Datetimes count in microseconds: the first one after `not_after`.
            return self.not_after + timedelta(microseconds=1)
        return datetime.combine(self.not_after + timedelta(days=1), time(), tzinfo=UTC)


def _plain_key_hash(value: Any) -> Any:
    """`- <hex>` is short for `- {hash: <hex>}` (the form before keys could expire)."""
    if isinstance(value, str):
        if not _KEY_HASH.fullmatch(value):
            raise ValueError(
                "expected the SHA-256 hex digest of a key (64 lowercase hex digits, "
                "from `llm-gateway hash-key`), or {hash: ..., not_after: ...}"
            )
        return {"hash": value}
    return value


class QueueConfig(BaseModel):
    """How a request waits when every upstream it may use is at `max_in_flight`."""

    model_config = _FROZEN

    # The longest a request waits for capacity; then 503 `model_overloaded` (0: never
    # waits). Within `retries.deadline_s`.
    max_wait_ms: Annotated[float, Field(ge=0, le=600_000)] = 5000.0
    # Requests one team may have waiting for one model; beyond, refused at once.
    max_depth: Annotated[int, Field(ge=1, le=100_000)] = 100


# An HTTP header's name (RFC 9110's token), and what no header value may hold.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class TracingConfig(BaseModel):
    """OpenTelemetry traces of API requests, exported over OTLP/HTTP (protobuf). Off unless
    `endpoint` is set; off, the request path does no tracing work at all. Read at start-up
    (a reload that changes it is refused: the exporter and its thread live with the
    process)."""

    model_config = _FROZEN

    # The collector's OTLP/HTTP base URL: spans go to `{endpoint}/v1/traces`.
    endpoint: Annotated[str, Field(pattern=r"^https?://[^\s/]+")] | None = None
    # An environment variable holding extra export headers, as OTEL_EXPORTER_OTLP_HEADERS
    # does: `name=value,name2=value2`, values percent-encoded (a vendor's API key, say).
    headers_env: Annotated[EnvSecret | None, Field(exclude=True)] = None
    # The share of new traces kept. A request whose client sent a `traceparent` follows the
    # client's sampling decision instead (parent-based), so a trace is kept whole or not.
    sample_ratio: Annotated[float, Field(ge=0, le=1)] = 1.0
    # A client's sampled `traceparent` is traced whatever `sample_ratio` says (the W3C's
    # and the SDK's default: its trace is kept whole). False: the ratio applies to those
    # too; any client, unauthenticated ones included, can otherwise have every one of its
    # requests traced, at about 0.7 ms of CPU each. Either way the context is continued.
    follow_client_sampling: bool = True
    # Spans are sent in batches at most this long after they end (or sooner, once a batch
    # of 512 is waiting).
    export_delay_ms: Annotated[float, Field(ge=10, le=60_000)] = 2000.0
    # One export request waits at most this long; spans it could not deliver are dropped
    # (and counted by the SDK's log), never retried into unbounded memory.
    export_timeout_s: Annotated[float, Field(gt=0, le=60)] = 10.0
    # Spans waiting for export at most; beyond, the oldest waiting is dropped for each new
    # one (a collector that cannot keep up costs spans, never memory).
    max_queue: Annotated[int, Field(ge=1, le=1_000_000)] = 8192

    @field_validator("headers_env", mode="before")
    @classmethod
    def _read_headers(cls, variable: Any, info: ValidationInfo) -> EnvSecret | None:
        secret = _read_env_secret(variable, info)
        if secret is None:
            return None
        variable, value = secret.variable, secret.value
        for i, pair in enumerate(value.split(",")):
            name, equals, text = pair.partition("=")
            # Names the position only: the value may be a secret.
            if not equals or not _HEADER_NAME.fullmatch(unquote(name.strip())):
                raise ValueError(f"{variable}: entry {i + 1} is not name=value")
            if _CONTROL.search(unquote(text)):
                raise ValueError(f"{variable}: entry {i + 1} has a control character")
        return secret

    def export_headers(self) -> dict[str, str]:
        """The extra export headers `headers_env` holds, decoded."""
        if self.headers_env is None:
            return {}
        pairs = (pair.partition("=") for pair in self.headers_env.value.split(","))
        return {unquote(name.strip()): unquote(value.strip()) for name, _, value in pairs}


class TeamQueueConfig(BaseModel):
    """A team's own bounds, over the top-level `queue` ones."""

    model_config = _FROZEN

    max_wait_ms: Annotated[float, Field(ge=0, le=600_000)] | None = None
    max_depth: Annotated[int, Field(ge=1, le=100_000)] | None = None


class TeamConfig(BaseModel):
    model_config = _FROZEN

    # The team's API keys as SHA-256 hex digests (`llm-gateway hash-key` makes them), each
    # plain or as {hash, not_after}: several at once while a key is being rotated.
    key_hashes: Annotated[
        list[Annotated[TeamKey, BeforeValidator(_plain_key_hash)]], Field(min_length=1)
    ]
    # Public model names (or aliases) the team may use; "*" for every model.
    models: Annotated[list[str], Field(min_length=1)]
    limits: TeamLimits = TeamLimits()
    # Narrower limits for one model (public name), applied on top of `limits`.
    model_limits: dict[str, TeamLimits] = {}
    # Policies applied to every request of the team, composed in this order.
    policies: list[Name] = []
    # Its weight when model capacity is full: teams with requests waiting are served in
    # proportion to their shares.
    share: Annotated[float, Field(gt=0, le=1000)] = 1.0
    queue: TeamQueueConfig = TeamQueueConfig()
    # The class of its requests unless `x-gateway-priority` says otherwise: low is served
    # only when no normal request waits for the capacity (batch and evaluation jobs).
    priority: Literal["normal", "low"] = "normal"


class RateLimitConfig(BaseModel):
    """`failure_mode` and `default_max_tokens` reload; the other settings belong to the
    backend (its slices included) and the failure counter, built once, and take effect only
    with a restart."""

    model_config = _FROZEN

    # Redis shared by all replicas; without it, limits are kept in this process only.
    # One server (redis://, rediss://, unix://) or a Redis Cluster
    # (redis+cluster://host:port[,host:port...], rediss+cluster:// for TLS).
    redis_url: str | None = None
    # What to do when Redis cannot answer in time: admit ("open") or refuse with 503.
    failure_mode: Literal["open", "closed"] = "open"
    # Deadline of one Redis call; the most Redis can add to a request.
    redis_timeout_ms: Annotated[float, Field(gt=0, le=10_000)] = 50.0
    # After a Redis failure, requests skip Redis for this long (then one probes it again).
    redis_retry_interval_s: Annotated[float, Field(gt=0)] = 1.0
    # At most one "Redis unavailable" warning per interval.
    warn_interval_s: Annotated[float, Field(gt=0)] = 10.0
    # Completion tokens reserved for a request that sets no max_tokens.
    default_max_tokens: Annotated[int, Field(ge=1)] = 1024
    key_prefix: Name = "llmgw"
    # Budget slices (Redis only, see gateway/limiter/slices.py): a process takes a slice of
    # a team's budget in one Redis call and admits against it locally. Off: every admission
    # is one Redis call.
    slices: bool = True
    # How long a slice lives; what it holds unused then is given back.
    slice_ttl_ms: Annotated[int, Field(ge=50, le=60_000)] = 1000

    @field_validator("redis_url")
    @classmethod
    def _redis_target(cls, url: str | None) -> str | None:
        if url is not None:
            RedisTarget.parse(url)  # its ValueError says what is wrong
        return url


class AuthFailureConfig(BaseModel):
    """Failed authentications counted per client address: past `max_failures` within
    `window_s`, every request from the address is refused with 429 for `block_s`, a valid
    key included (otherwise a guess that hits would still be told apart). Counted in Redis
    when `rate_limits.redis_url` is set (replicas share the count; its deadline, breaker and
    failure_mode apply), else in this process. Successful authentications never wait for
    Redis. Read once at start-up, with the counts and blocks a reload keeps: every setting
    here takes effect only with a restart."""

    model_config = _FROZEN

    enabled: bool = True
    # A person mistyping a key, or a deploy rolling out a new one, stays far below this; a
    # script looping on a revoked key, or anyone guessing, does not.
    max_failures: Annotated[int, Field(ge=1)] = 20
    window_s: Seconds = 60.0
    # Longer than the window, so a guesser gets max_failures tries per block, not per window.
    block_s: Seconds = 300.0
    # Proxies (addresses or networks) whose X-Forwarded-For is believed: behind them, the
    # client is the rightmost address of that header not in this list. Empty: the client is
    # the connection's peer, and X-Forwarded-For is ignored (anyone can send one).
    trusted_proxies: list[IPvAnyNetwork] = []


class RetryConfig(BaseModel):
    """Retries on another upstream after 429, 503, 504, 529, a failed connection or a
    per-try timeout."""

    model_config = _FROZEN

    # Upstream attempts per request, the first included.
    max_attempts: Annotated[int, Field(ge=1, le=10)] = 3
    # The most one upstream call may take until its answer is committed (a whole answer
    # read, or a stream's first event): every try and backoff included. Each try waits
    # at most what is left of it, so a call whose upstreams all hang gets its 504 here,
    # not after max_attempts x first_byte; a retry is made only if time is left after its
    # backoff. 120 s is twice the default first_byte: room for one full retry after a
    # hung upstream, and a 504 well before the client's own timeout (600 s in the openai
    # SDK). A stream, once started, is bound by its upstream's idle and total instead.
    deadline_s: Seconds = 120.0
    # Retries in flight may not exceed this share of requests in flight...
    budget_ratio: Annotated[float, Field(ge=0, le=1)] = 0.2
    # ...except that this many are always allowed (Envoy's defaults: 20%, 3).
    budget_min: Annotated[int, Field(ge=0)] = 3
    backoff_base_ms: Annotated[float, Field(ge=0)] = 25.0
    backoff_max_ms: Annotated[float, Field(ge=0)] = 250.0
    # An upstream Retry-After longer than this is passed to the client instead of waited.
    max_retry_after_s: Annotated[float, Field(ge=0)] = 2.0


class HealthConfig(BaseModel):
    """Passive health: upstreams that keep failing are ejected for a while."""

    model_config = _FROZEN

    # Consecutive failures (connect error, 5xx, timeout) that eject an upstream.
    consecutive_failures: Annotated[int, Field(ge=1)] = 5
    # First ejection; each further one doubles it, up to the maximum.
    base_ejection_s: Annotated[float, Field(gt=0)] = 5.0
    max_ejection_s: Annotated[float, Field(gt=0)] = 300.0


class SecurityConfig(BaseModel):
    model_config = _FROZEN

    # TEST ONLY: let HIPAA requests reach a hipaa_eligible upstream over plain http on
    # loopback (test suites have no certificates). Never set it in production.
    allow_plaintext_loopback_hipaa: bool = False


class GatewayConfig(BaseModel):
    model_config = _FROZEN

    server: ServerConfig = ServerConfig()
    audit: AuditConfig = AuditConfig()
    rate_limits: RateLimitConfig = RateLimitConfig()
    auth_failures: AuthFailureConfig = AuthFailureConfig()
    retries: RetryConfig = RetryConfig()
    health: HealthConfig = HealthConfig()
    security: SecurityConfig = SecurityConfig()
    queue: QueueConfig = QueueConfig()
    tracing: TracingConfig = TracingConfig()
    # Policy files (*.yaml, named by file stem), relative to the configuration file.
    policies_dir: str | None = None
    # Policies given inline, by name (besides those of policies_dir).
    policies: dict[Name, Policy] = {}
    # Adding or removing an upstream takes effect only with a restart.
    upstreams: dict[Name, UpstreamConfig]
    models: dict[Name, ModelConfig]
    teams: dict[Name, TeamConfig]


def _cross_reference_problems(config: GatewayConfig) -> list[str]:
    problems: list[str] = []
    # Public names first, so that a clashing alias is the one blamed, wherever it stands.
    public_names: dict[str, str] = {name: f"models.{name}" for name in config.models}
    for name, model in config.models.items():
        for i, target in enumerate(model.upstreams):
            if target.upstream not in config.upstreams:
                problems.append(
                    f"models.{name}.upstreams[{i}].upstream: unknown upstream "
                    f"'{target.upstream}' (known: {', '.join(sorted(config.upstreams))})"
                )
        for i, param in enumerate(model.drop_params):
            if param not in CONTRACT_PARAMETERS:
                problems.append(f"models.{name}.drop_params[{i}]: not a contract parameter")
        for i, alias in enumerate(model.aliases):
            where = f"models.{name}.aliases[{i}]"
            if alias in public_names:
                problems.append(f"{where}: '{alias}' is already used by {public_names[alias]}")
            else:
                public_names[alias] = where
    owner_of_hash: dict[str, str] = {}
    for team_name, team in config.teams.items():
        for i, wanted in enumerate(team.models):
            if wanted != "*" and wanted not in public_names:
                problems.append(f"teams.{team_name}.models[{i}]: unknown model '{wanted}'")
        for limited in team.model_limits:
            if limited not in config.models:
                problems.append(
                    f"teams.{team_name}.model_limits.{limited}: unknown model "
                    "(use the model's public name)"
                )
        for i, policy_name in enumerate(team.policies):
            if policy_name not in config.policies:
                problems.append(
                    f"teams.{team_name}.policies[{i}]: unknown policy '{policy_name}' "
                    f"(known: {', '.join(sorted(config.policies)) or 'none'})"
                )
        if all(name in config.policies for name in team.policies):
            _, conflicts = compose(team.policies, config.policies)
            problems += [f"teams.{team_name}.policies: {conflict}" for conflict in conflicts]
        for i, key in enumerate(team.key_hashes):
            where = f"teams.{team_name}.key_hashes[{i}]"
            if key.hash in owner_of_hash:
                problems.append(
                    f"{where}: the same key is already given to {owner_of_hash[key.hash]}"
                )
            else:
                owner_of_hash[key.hash] = where
    in_use = {name for team in config.teams.values() for name in team.policies}
    for name, policy in config.policies.items():
        if name not in in_use:  # a shipped file no team applies needs nothing configured
            continue
        if policy.safety is not None and policy.safety.model not in config.models:
            problems.append(
                f"policies.{name}.safety.model: unknown model '{policy.safety.model}' "
                "(the safety model must be configured under models:)"
            )
        if policy.caps is not None:
            for i, allowed in enumerate(policy.caps.allowed_models or []):
                if allowed not in config.models:
                    problems.append(f"policies.{name}.caps.allowed_models[{i}]: unknown model")
    return problems


def parse_config(
    raw: Any, environ: Mapping[str, str] | None = None, base_dir: Path | None = None
) -> GatewayConfig:
    """Validate an already-parsed document; raises ConfigError listing every problem.
    `policies_dir` is resolved against `base_dir` (the configuration file's folder)."""
    if isinstance(raw, dict) and isinstance(raw.get("policies_dir"), str):
        directory = (base_dir or Path.cwd()) / raw["policies_dir"]
        if not directory.is_dir():
            raise ConfigError([f"policies_dir: {directory} is not a directory"])
        from_files, problems = load_policy_files(directory)
        clashes = sorted(set(from_files) & set(raw.get("policies") or {}))
        problems += [f"policies.{name}: defined inline and in {directory}" for name in clashes]
        if problems:
            raise ConfigError(problems)
        raw = {**raw, "policies": {**(raw.get("policies") or {}), **from_files}}
    try:
        config = GatewayConfig.model_validate(
            raw, context={"environ": os.environ if environ is None else environ}
        )
    except ValidationError as exc:
        raise ConfigError(
            [
                f"{field_path(err['loc']) or '(top level)'}: "
                f"{err['msg'].removeprefix('Value error, ')}"
                for err in exc.errors(include_input=False)
            ]
        ) from None
    problems = _cross_reference_problems(config)
    if problems:
        raise ConfigError(problems)
    return config


@dataclass(frozen=True, slots=True)
class ConfigFile:
    """A configuration and the file it was read from: its path and the SHA-256 of the
    bytes that were validated (shown by /readyz, to tell which file is in force)."""

    path: Path
    sha256: str
    config: GatewayConfig


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """Read and validate a YAML configuration file."""
    return read_config_file(path, environ).config


def read_config_file(path: str | Path, environ: Mapping[str, str] | None = None) -> ConfigFile:
    """Read a YAML configuration file once, validate it and hash what was read; raises
    ConfigError listing every problem."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 (byte {exc.start})"]) from None
    try:
        raw = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError([f"{path}: not valid YAML{where}: {exc.problem}"]) from None
    except yaml.YAMLError as exc:
        position = getattr(exc, "position", None)
        where = f" at line {text[:position].count(chr(10)) + 1}" if position is not None else ""
        raise ConfigError([f"{path}: not valid YAML{where}"]) from None
    config = parse_config(raw, environ, Path(path).resolve().parent)
    return ConfigFile(Path(path), hashlib.sha256(data).hexdigest(), config)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping: with plain YAML the second
    silently replaces the first, e.g. a team defined twice."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)
