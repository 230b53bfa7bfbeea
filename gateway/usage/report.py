"""The usage report's aggregation: audit lines in, one `GroupUsage` per team, model or
(team, model) out, plus a total, in memory that depends on the number of groups, never on
the number of lines.

Per group: requests; errors (answers with a status of 400 or more) by the `error_code` of
the audit line, or `status_<status>` for a line without one (lines written before the
field existed, a 499 for a client that left, an error body without a code); prompt and
completion tokens (exact integer sums); latency p50 and p95 (see `latency`); and, with
prices, the cost: each model's token sums times its price, in exact decimal arithmetic,
rounded to millionths at the end. A group none of whose models has a price has no cost
(None, not 0); the tokens of its unpriced models are counted apart.

Which lines count: `"event": "audit"` lines with the fields read here, whose `timestamp` is
in the window (`since` included, `until` excluded). Other events are skipped and counted,
and so are lines that are not JSON, are cut short or lack a field ("unreadable").
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Literal, NotRequired

from pydantic import Field, TypeAdapter, ValidationError
from pydantic_core import from_json

# pydantic reads only typing_extensions' TypedDict before Python 3.12 (it is one of
# pydantic's own dependencies).
from typing_extensions import TypedDict

from gateway.config import GatewayConfig, ModelPrice
from gateway.usage.audit_files import AuditFileError, audit_lines
from gateway.usage.latency import LatencyHistogram

# --by: the fields a group is keyed by, in the order its columns are shown.
GROUPINGS: dict[str, tuple[str, ...]] = {
    "team": ("team",),
    "model": ("model",),
    "team,model": ("team", "model"),
    "model,team": ("model", "team"),
}

# Costs are rounded to millionths of the currency unit, once, after summing.
COST_QUANTUM = Decimal("0.000001")
_PER_MILLION = Decimal(1_000_000)
# The audit line's timestamp as the gateway writes it (UTC, microseconds): such texts sort
# as the moments they name, so the window is checked by comparing strings.
_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


class AuditLine(TypedDict):
    """The fields of an audit line the report reads (the others are ignored)."""

    event: Literal["audit"]
    timestamp: str
    team: str | None
    model: str | None
    status: int
    latency_ms: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    prompt_tokens: Annotated[int, Field(ge=0)] | None
    completion_tokens: Annotated[int, Field(ge=0)] | None
    # Absent from lines written before the field existed.
    error_code: NotRequired[str | None]


# The adapter's core validator, called without the adapter's wrapper (a tenth of the time
# per line).
_read_audit_line: Callable[[bytes], AuditLine] = TypeAdapter(AuditLine).validator.validate_json


def moment(text: str) -> datetime:
    """An ISO 8601 date or time, as --since and --until take it: a date alone is its
    midnight, a time without an offset is UTC. Raises ValueError."""
    value = datetime.fromisoformat(text.strip())
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def timestamp_text(value: datetime) -> str:
    """`value` written as the gateway writes an audit line's timestamp."""
    utc = value.astimezone(UTC).replace(tzinfo=None)
    return utc.isoformat(timespec="microseconds") + "Z"


@dataclass(frozen=True, slots=True)
class Window:
    """The audit lines counted: timestamp >= since (when given) and < until (when given)."""

    since: datetime | None = None
    until: datetime | None = None


def prices_of(config: GatewayConfig) -> dict[str, ModelPrice]:
    """The configured prices, by the model's public name (the audit line's `model`)."""
    return {name: model.price for name, model in config.models.items() if model.price}


class NoSecretsNeeded(Mapping[str, str]):
    """The environment a configuration is read in for its prices: every variable is set
    (to a placeholder). The report reads no secret, so a configuration is read where the
    upstream keys and collector headers `serve` needs are not in the environment (an
    operator's shell). The placeholder is a `name=value` pair, the shape of the most
    demanding secret, `tracing.headers_env`'s, so that every secret's check passes."""

    def __getitem__(self, variable: str) -> str:
        return "not-read=by-llm-gateway-usage"

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


@dataclass(slots=True)
class GroupUsage:
    """What one group used; `add` takes one counted audit line."""

    requests: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    # [prompt, completion] tokens by model, for the cost: every model the group asked for.
    tokens_by_model: dict[str | None, list[int]] = field(default_factory=dict)

    def add(self, line: AuditLine) -> None:
        self.requests += 1
        status = line["status"]
        if status >= 400:
            code = line.get("error_code") or f"status_{status}"
            self.errors[code] = self.errors.get(code, 0) + 1
        prompt = line["prompt_tokens"] or 0
        completion = line["completion_tokens"] or 0
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        tokens = self.tokens_by_model.get(line["model"])
        if tokens is None:
            self.tokens_by_model[line["model"]] = [prompt, completion]
        else:
            tokens[0] += prompt
            tokens[1] += completion
        self.latency.add(line["latency_ms"])

    def merge(self, other: GroupUsage) -> None:
        self.requests += other.requests
        for code, count in other.errors.items():
            self.errors[code] = self.errors.get(code, 0) + count
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.latency.merge(other.latency)
        for model, (prompt, completion) in other.tokens_by_model.items():
            tokens = self.tokens_by_model.setdefault(model, [0, 0])
            tokens[0] += prompt
            tokens[1] += completion

    def cost(self, prices: Mapping[str, ModelPrice]) -> tuple[Decimal | None, int]:
        """The cost of the group's priced models (None when none of them has a price) and
        the tokens of its models without one."""
        total: Decimal | None = None
        unpriced = 0
        for model, (prompt, completion) in self.tokens_by_model.items():
            price = None if model is None else prices.get(model)
            if price is None:
                unpriced += prompt + completion
                continue
            # Decimal(repr(x)): the price as written in the file (0.15, not 0.1499999...).
            cost = (
                prompt * Decimal(repr(price.input_per_million))
                + completion * Decimal(repr(price.output_per_million))
            ) / _PER_MILLION
            total = cost if total is None else total + cost
        return (None if total is None else total.quantize(COST_QUANTUM)), unpriced


@dataclass(slots=True)
class LineCounts:
    counted: int = 0  # audit lines in the window
    outside_window: int = 0  # audit lines before since or from until on
    other_events: int = 0  # JSON lines of another event (the log stream's)
    unreadable: int = 0  # not JSON, cut short, or without a field the report reads

    @property
    def skipped(self) -> int:
        return self.other_events + self.unreadable


class UsageReport:
    """Audit lines aggregated by the fields `by` names, within `window`."""

    def __init__(self, by: tuple[str, ...], window: Window | None = None) -> None:
        self.by = by
        self.window = window or Window()
        self.groups: dict[tuple[str | None, ...], GroupUsage] = {}
        self.lines = LineCounts()
        # Files that could not be read to their end, each with why.
        self.problems: list[str] = []
        self._since = None if self.window.since is None else timestamp_text(self.window.since)
        self._until = None if self.window.until is None else timestamp_text(self.window.until)
        key = operator.itemgetter(*by)
        self._key: Callable[[AuditLine], tuple[str | None, ...]] = (
            (lambda line: (key(line),)) if len(by) == 1 else key
        )

    def read(self, path: Path) -> None:
        """Counts the lines of one file; a file that cannot be read to its end is named in
        `problems`, its lines before the damage counted."""
        try:
            self._count(audit_lines(path))
        except AuditFileError as error:
            self.problems.append(str(error))

    def _count(self, lines: Iterator[bytes]) -> None:
        counts, groups, key = self.lines, self.groups, self._key
        since, until = self._since, self._until
        for raw in lines:
            try:
                line = _read_audit_line(raw)
            except ValidationError:
                self._skip(raw)
                continue
            stamp = line["timestamp"]
            if not _TIMESTAMP.fullmatch(stamp):
                normalized = _normalized(stamp)
                if normalized is None:
                    counts.unreadable += 1
                    continue
                stamp = normalized
            if (since is not None and stamp < since) or (until is not None and stamp >= until):
                counts.outside_window += 1
                continue
            counts.counted += 1
            group_key = key(line)
            group = groups.get(group_key)
            if group is None:
                group = groups[group_key] = GroupUsage()
            group.add(line)

    def _skip(self, raw: bytes) -> None:
        try:
            parsed = from_json(raw)
        except ValueError:
            parsed = None
        event = parsed.get("event") if isinstance(parsed, dict) else None
        if isinstance(event, str) and event != "audit":
            self.lines.other_events += 1
        else:
            self.lines.unreadable += 1

    def total(self) -> GroupUsage:
        total = GroupUsage()
        for group in self.groups.values():
            total.merge(group)
        return total


def _normalized(stamp: str) -> str | None:
    """Another ISO 8601 form of a timestamp (a logger's, without microseconds) as the
    gateway writes it; None for a text that is not a time."""
    try:
        return timestamp_text(moment(stamp))
    except ValueError:
        return None
