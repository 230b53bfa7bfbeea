"""`llm-gateway usage`, run as a process on a month of a busy gateway's audit trail (1,000,000
lines, a plain file and its gzip rotation, given newest first), reports exactly the totals
the generator wrote (requests, errors by code, tokens, cost from the configured prices, the
lines outside the window and the junk skipped), p50 and p95 within the documented 1%, and
uses the same memory as on a tenth of the lines: memory does not grow with the files."""

from __future__ import annotations

import gzip
import json
import math
import os
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO

import pytest
import yaml

from gateway.usage.latency import RELATIVE_ERROR
from tests.conftest import MODEL, OPENAI_MODEL, OTHER_TEAM_MODEL, UPSTREAM_KEY_ENV, config_dict

ROOT = Path(__file__).resolve().parents[2]
LINES = 1_000_000
BASELINE_LINES = 100_000
ROTATED_LINES = 300_000  # the oldest lines, in the .gz rotation
SINCE, UNTIL = "2025-03-01T00:00:00Z", "2025-04-01T00:00:00Z"
# Prices per million tokens; the third model has none.
PRICES = {MODEL: ("0.05", "0.08"), OPENAI_MODEL: ("0.15", "0.6")}
TEAMS = ("search", "ads", "support", "research")
MODELS = (MODEL, OPENAI_MODEL, OTHER_TEAM_MODEL)
# Each model's latency: lognormal, median e^mu ms.
LATENCY_MU = {MODEL: 6.0, OPENAI_MODEL: 6.8, OTHER_TEAM_MODEL: 5.2}

pytestmark = pytest.mark.timeout(120)


@dataclass(frozen=True)
class Template:
    """One distinct audit line but for its request id, and what it counts for."""

    text: str  # the line after `{"request_id":"<id>",`
    key: tuple[str | None, str | None]  # (team, model)
    counted: bool  # in the window
    error: str | None  # what the report counts the error as
    prompt: int
    completion: int
    latency: float


def audit_line_rest(
    team: str | None,
    model: str | None,
    status: int,
    code: str | None,
    prompt: int | None,
    completion: int | None,
    latency: float,
    stamp: str,
    with_code: bool,
) -> str:
    """The audit line as the gateway writes it, after its request id."""
    fields: dict[str, Any] = {
        "team": team,
        "model": model,
        "upstream": None if model is None else "vllm-a",
        "status": status,
        "outcome": "client_aborted" if status == 499 else "ok",
        "latency_ms": latency,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "queue_wait_ms": 0.0,
    }
    if with_code:  # lines written before the field existed have none
        fields["error_code"] = code
    fields |= {
        "method": "POST",
        "attempts": 0 if prompt is None else 1,
        "policies": ["default-caps"],
        "compliance": "none",
        "safety_verdict": "not_checked",
        "answer_safety_verdict": None,
        "auth_failure": "unknown_key" if team is None else None,
        "client_address": "10.1.2.3" if team is None else None,
        "key_fingerprint": "0badc0de" if team is None else None,
        "event": "audit",
        "timestamp": stamp,
    }
    return json.dumps(fields, separators=(",", ":"))[1:] + "\n"


def make_templates(rng: random.Random, count: int) -> list[Template]:
    start = 1740441600  # 2025-02-25T00:00:00Z: a few days before the window...
    span = 1743724800 - start  # ...to 2025-04-04: a few days after it
    templates = []
    for i in range(count):
        seconds = start + rng.randrange(span)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        stamp += f".{rng.randrange(1_000_000):06d}Z"
        if i < 3:  # the window's edges: since counts, until does not
            stamp = ("2025-03-01T00:00:00.000000Z", "2025-03-31T23:59:59.999999Z")[i % 2]
            stamp = "2025-04-01T00:00:00.000000Z" if i == 2 else stamp
        team: str | None = rng.choice(TEAMS)
        model: str | None = rng.choice(MODELS)
        latency = round(rng.lognormvariate(LATENCY_MU[model or MODEL], 0.6), 3)
        draw = rng.random()
        status, code, with_code = 200, None, True
        prompt: int | None = rng.randrange(1, 4000)
        completion: int | None = rng.randrange(1, 1000)
        if draw < 0.03:
            status, code = 429, "rate_limit_exceeded"
        elif draw < 0.04:
            status, code = 429, "upstream_rate_limited"
        elif draw < 0.05:
            status, code = 503, "model_overloaded"
        elif draw < 0.06:
            status, code, with_code = 503, None, False  # an older line: status_503
        elif draw < 0.07:
            status, code = 400, None  # an error body without a code: status_400
        elif draw < 0.08:
            status = 499  # the client left mid-stream: what was relayed is charged
        elif draw < 0.10:
            team, model, status, code = None, None, 401, "invalid_api_key"
            latency = round(rng.uniform(0.05, 0.9), 3)
        if status not in (200, 499):
            prompt = completion = None
        text = audit_line_rest(
            team, model, status, code, prompt, completion, latency, stamp, with_code
        )
        templates.append(
            Template(
                text=text,
                key=(team, model),
                counted=SINCE.replace("Z", ".000000Z") <= stamp < UNTIL.replace("Z", ".000000Z"),
                error=None if status < 400 else code or f"status_{status}",
                prompt=prompt or 0,
                completion=completion or 0,
                latency=latency,
            )
        )
    return templates


# Junk a month of audit files can hold: other events, a line a crash cut (then the next
# write went on after it), a block of zeros a crash left, non-JSON, JSON that is not an
# audit line or lacks a field.
OTHER_EVENTS = [
    '{"event":"config_reloaded","level":"info","timestamp":"2025-03-02T00:00:00.000000Z"}\n',
    '{"event":"request","status":200,"timestamp":"2025-03-02T00:00:01.000000Z"}\n',
]
UNREADABLE = [
    '{"request_id":"cut","team":"search","model":"gpt-4o-mini","sta\n',
    "\0" * 4096 + "\n",
    "Traceback (most recent call last):\n",
    "[1, 2, 3]\n",
    '{"event":"audit","timestamp":"2025-03-02T00:00:00.000000Z","team":"ads"}\n',
]


@dataclass
class Generated:
    lines: int
    uses: Counter[int]  # how many lines each template wrote


def write_audit_files(
    templates: list[Template], rng: random.Random, lines: int, plain: Path, rotated: Path | None
) -> Generated:
    """`lines` audit lines drawn from `templates`, the junk among them: the first
    ROTATED_LINES gzip-compressed into `rotated` (when given), the rest in `plain`, whose
    last line a crash cut short."""
    picks = rng.choices(range(len(templates)), k=lines)
    split = 0
    if rotated is not None:
        split = ROTATED_LINES
        with gzip.open(rotated, "wt", compresslevel=1, encoding="utf-8") as out:
            write_lines(out, templates, picks, 0, split, OTHER_EVENTS[:1] + UNREADABLE[:3])
    with plain.open("w", encoding="utf-8") as out:
        write_lines(out, templates, picks, split, lines, OTHER_EVENTS[1:] + UNREADABLE[3:])
        out.write('{"request_id":"the-crash","team":"search","mo')  # no line end
    return Generated(lines, Counter(picks))


def write_lines(
    out: TextIO, templates: list[Template], picks: list[int], begin: int, end: int, junk: list[str]
) -> None:
    """Lines begin..end of `picks`, each with its own request id, `junk` after the first
    chunk of them."""
    texts = [template.text for template in templates]
    chunk = 50_000
    for first in range(begin, end, chunk):
        out.write(
            "".join(
                f'{{"request_id":"{n:032x}",{texts[i]}'
                for n, i in enumerate(picks[first : min(first + chunk, end)], start=first)
            )
        )
        if first == begin:
            out.write("".join(junk))


@dataclass
class Expected:
    requests: int = 0
    errors: Counter[str] | None = None
    prompt: int = 0
    completion: int = 0
    cost: Decimal | None = None
    unpriced: int = 0
    latencies: Counter[float] | None = None


def expected_groups(templates: list[Template], uses: Counter[int]) -> dict[Any, Expected]:
    groups: dict[Any, Expected] = {}
    for index, count in uses.items():
        template = templates[index]
        if not template.counted:
            continue
        for key in (template.key, "total"):
            group = groups.setdefault(key, Expected(errors=Counter(), latencies=Counter()))
            assert group.errors is not None and group.latencies is not None
            group.requests += count
            if template.error is not None:
                group.errors[template.error] += count
            group.prompt += count * template.prompt
            group.completion += count * template.completion
            group.latencies[template.latency] += count
            model = template.key[1]
            if model in PRICES:
                price_in, price_out = map(Decimal, PRICES[model])
                cost = count * (template.prompt * price_in + template.completion * price_out)
                group.cost = (group.cost or Decimal(0)) + cost / 1_000_000
            elif model is not None:
                group.unpriced += count * (template.prompt + template.completion)
    return groups


def exact_quantile(latencies: Counter[float], q: float) -> float:
    """The latency at rank floor(q * (n - 1)) of the sorted latencies."""
    rank = math.floor(q * (sum(latencies.values()) - 1))
    seen = 0
    for latency in sorted(latencies):
        seen += latencies[latency]
        if rank < seen:
            return latency
    raise AssertionError("rank beyond the latencies")


# Starts the command and writes its peak RSS (KiB) to the file argv[1] names. The command
# is started from this small process, not from pytest's: a child's ru_maxrss counts the
# memory of the process it was forked from until it execs, and pytest's holds the
# generator's lists.
MEASURE = """
import os, subprocess, sys
child = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(child.pid, 0)
child.returncode = os.waitstatus_to_exitcode(status)
with open(sys.argv[1], "w") as out:
    out.write(f"{usage.ru_maxrss} {child.returncode}")
"""


def run_usage(tmp_path: Path, *args: str) -> tuple[dict[str, Any], int, float]:
    """`python -m gateway usage ... --format json` as a process: its report, its peak
    resident memory in KiB and its wall time."""
    env = {k: v for k, v in os.environ.items() if k != UPSTREAM_KEY_ENV}  # needs no keys
    measured = tmp_path / "measured"
    command = [sys.executable, "-m", "gateway", "usage", *args, "--format", "json"]
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, str(measured), *command],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        check=True,
    ).stdout
    seconds = time.monotonic() - started
    peak_kib, returncode = map(int, measured.read_text().split())
    assert returncode == 0
    return json.loads(out), peak_kib, seconds


@pytest.fixture
def audit_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    for path in tmp_path.iterdir():  # 400 MB, not to be kept with pytest's last temp dirs
        path.unlink()


def test_a_million_audit_lines_are_reported_exactly_in_bounded_memory(
    audit_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tmp_path = audit_dir
    started = time.monotonic()
    rng = random.Random(14)
    templates = make_templates(rng, 20_000)
    plain, rotated = tmp_path / "audit.jsonl", tmp_path / "audit.jsonl.1.gz"
    generated = write_audit_files(templates, rng, LINES, plain, rotated)
    baseline_file = tmp_path / "baseline.jsonl"
    baseline = write_audit_files(templates, rng, BASELINE_LINES, baseline_file, None)
    config = config_dict("http://127.0.0.1:9")
    for model, (price_in, price_out) in PRICES.items():
        config["models"][model]["price"] = {
            "input_per_million": float(price_in),
            "output_per_million": float(price_out),
        }
    config_file = tmp_path / "gateway.yaml"
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    generating = time.monotonic() - started

    window = ("--since", SINCE, "--until", UNTIL, "--config", str(config_file))
    small, small_kib, _ = run_usage(
        tmp_path, "--audit", str(baseline_file), "--by", "team,model", *window
    )
    report, kib, seconds = run_usage(
        tmp_path, "--audit", str(plain), str(rotated), "--by", "team,model", *window
    )

    with capsys.disabled():
        print(
            f"\n{LINES} lines ({plain.stat().st_size + rotated.stat().st_size} bytes on disk) "
            f"generated in {generating:.1f} s; usage read them in {seconds:.1f} s with a peak "
            f"RSS of {kib / 1024:.1f} MiB ({small_kib / 1024:.1f} MiB for {BASELINE_LINES})"
        )
    # Memory does not grow with the lines: ten times as many in about the same RSS.
    assert kib <= small_kib + 10 * 1024
    assert small["total"]["requests"] < report["total"]["requests"] / 5

    groups = expected_groups(templates, generated.uses)
    total = groups.pop("total")
    assert report["lines"] == {
        "counted": total.requests,
        "outside_window": LINES - total.requests,
        "skipped": len(OTHER_EVENTS) + len(UNREADABLE) + 1,
        "skipped_other_events": len(OTHER_EVENTS),
        "skipped_unreadable": len(UNREADABLE) + 1,  # and the cut last line
    }
    assert report["problems"] == []
    reported = {(row["team"], row["model"]): row for row in report["groups"]}
    assert set(reported) == set(groups)
    assert {None, OTHER_TEAM_MODEL, MODEL} <= {model for _, model in reported}
    for key, expected in [*groups.items(), ("total", total)]:
        row = report["total"] if key == "total" else reported[key]
        assert expected.errors is not None and expected.latencies is not None
        assert row["requests"] == expected.requests, key
        assert row["error_codes"] == dict(expected.errors), key
        assert row["errors"] == sum(expected.errors.values()), key
        assert (row["prompt_tokens"], row["completion_tokens"]) == (
            expected.prompt,
            expected.completion,
        ), key
        expected_cost = (
            None if expected.cost is None else float(expected.cost.quantize(Decimal("0.000001")))
        )
        assert row["cost"] == expected_cost, key
        assert row["unpriced_tokens"] == expected.unpriced, key
        for column, q in (("latency_p50_ms", 0.5), ("latency_p95_ms", 0.95)):
            exact = exact_quantile(expected.latencies, q)
            # The documented bound: 1%, plus rounding to the audit's 0.001 ms.
            assert abs(row[column] - exact) <= RELATIVE_ERROR * exact + 0.0005 + 1e-9, key
    assert reported[(None, None)]["cost"] is None
    assert reported[(TEAMS[0], OTHER_TEAM_MODEL)]["cost"] is None
    assert total.errors is not None
    assert {"rate_limit_exceeded", "upstream_rate_limited", "model_overloaded"} <= set(total.errors)
    assert {"status_503", "status_400", "status_499", "invalid_api_key"} <= set(total.errors)
    assert baseline.lines == BASELINE_LINES
