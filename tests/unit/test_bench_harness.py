"""The benchmark's harness (bench/run.py), without running the benchmark: wrk's result line
is read into the documented figures, the results carry the documented keys and verdicts,
the canned answers pass the gateway's own checks, and the nginx upstream answers POSTs with
them (nginx -t accepts both configurations; one second of wrk through bench/wrk.lua)."""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench import run
from gateway.upstream.shape import check_event

# wrk's human report with bench/wrk.lua's line after it, as wrk 4.1 prints them.
WRK_OUTPUT = """Running 5s test @ http://127.0.0.1:40000/v1/chat/completions
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    14.62ms    2.10ms  40.27ms   90.12%
    Req/Sec     4.40k   300.00     4.80k    70.00%
  21893 requests in 5.00s, 14.58MB read
Requests/sec:   4378.12
Transfer/sec:      2.92MB
BENCH_RESULT {"requests": 21893, "duration_us": 5000500, "bytes": 15288000, \
"errors": {"connect": 0, "read": 1, "write": 0, "status": 2, "timeout": 0}, \
"latency_us": {"min": 310, "mean": 14620.55, "max": 40270, "p50": 14200, "p90": 16100, \
"p99": 22000, "p99.9": 31000}}
"""


def test_wrk_line_becomes_the_documented_figures() -> None:
    figures = run.parse_wrk(WRK_OUTPUT)
    assert figures == {
        "requests": 21893,
        "rps": 4378.2,
        "p50_ms": 14.2,
        "p90_ms": 16.1,
        "p99_ms": 22.0,
        "mean_ms": 14.621,
        "max_ms": 40.27,
        "non_2xx": 2,
        "socket_errors": 1,
    }
    with pytest.raises(ValueError, match="no BENCH_RESULT"):
        run.parse_wrk(WRK_OUTPUT.split("BENCH_RESULT")[0])


def figures(rps: float, p50: float, p99: float, non_2xx: int = 0) -> dict[str, Any]:
    return {
        "requests": int(rps * 5),
        "rps": rps,
        "p50_ms": p50,
        "p90_ms": p50,
        "p99_ms": p99,
        "mean_ms": p50,
        "max_ms": p99,
        "non_2xx": non_2xx,
        "socket_errors": 0,
        "cpu_ms_per_request": round(1000 / rps, 4),
        "requests_per_cpu_s": round(rps),
    }


def test_report_has_the_documented_keys_and_verdicts() -> None:
    # Two rounds each; the best is kept (highest rps at c=64, lowest p50 at c=1).
    speed = {"upstream": (40000, 0.02), "nginx": (15000, 0.07), "gateway": (5000, 0.25)}
    speed["gateway-redis"] = (4500, 0.28)
    speed["gateway-redis-cap"] = (4400, 0.28)
    speed["gateway-redis-trace"] = (3600, 0.3)
    runs = {
        proxy: {
            case.name: [
                figures(rps * 0.9, p50 * 1.2, p50 * 3),
                figures(rps, p50, p50 * 2, non_2xx=1 if proxy == "nginx" else 0),
            ]
            for case in run.CASES
        }
        for proxy, (rps, p50) in speed.items()
    }
    results = run.summarize(runs)
    row = results["gateway-redis"]["json-c64"]
    assert row["rps"] == 4500 and row["rps_vs_nginx"] == 0.3 and row["rps_vs_gateway"] == 0.9
    row = results["gateway-redis"]["json-c1"]
    assert row["p50_ms"] == 0.28 and row["added_p50_ms"] == 0.26 and row["added_p99_ms"] == 0.52
    assert not row["errors"] and len(row["rounds"]) == 2
    assert results["nginx"]["sse20-c64"]["errors"] and results["nginx"]["sse20-c64"]["non_2xx"] == 1

    targets = run.check_targets(results)
    verdicts = {name: target["pass"] for name, target in targets.items()}
    assert verdicts == {
        "json_rps_c64": True,
        "json_added_p50_c1": True,
        "json_added_p99_c1": True,
        "sse20_rps_c64": True,
        "sse20_added_p50_c1": True,
        "redis_stage_p50": True,  # 0.03 ms
        "redis_stage_rps_loss": False,  # 10%
        "capacity_rps_loss": True,  # 2.2%
        "tracing_rps_loss": True,  # 20%
    }
    assert targets["json_rps_c64"]["per_cpu_second"] == 4500
    report = {
        "date": "2030-01-02T03:04:05Z",
        "machine": {
            "cpu": "cpu",
            "cores": 2,
            "kernel": "6",
            "python": "3.11",
            "nginx": "n",
            "wrk": "w",
        },
        "settings": {"duration_s": 5, "rounds": 2, "selection": "best"},
        "proxies": {name: {"description": name, "cpus": "0", "rss_mb": 10.0} for name in speed},
        "peers": {"litellm": "skipped: not installed"},
        "results": results,
        "targets": targets,
        "problems": ["nginx json-c1 round 2: 1 non-2xx"],
        "peer_problems": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        written = run.write_report(report, Path(tmp))
        assert sorted(path.name for path in written) == [
            "2030-01-02.json",
            "2030-01-02.md",
            "latest.json",
            "latest.md",
        ]
        assert json.loads((Path(tmp) / "latest.json").read_text()) == report
        markdown = (Path(tmp) / "latest.md").read_text()
    assert "| gateway-redis | 0 | 4,500 (0.30 / 0.90) |" in markdown
    assert (
        "| Redis stage throughput loss at c=64 (vs limits off) <= 5% | 0.1 | **FAIL** |" in markdown
    )
    assert "| JSON requests/s at c=64 >= 4,000 | 4500.0 (4,500 per CPU-second) | pass |" in markdown
    assert "| gateway-redis | 0.222 (4,500) |" in markdown  # CPU per answer
    assert "**errors**" in markdown and "## Problems" in markdown


def test_canned_streams_pass_the_gateways_event_check() -> None:
    answers = run.canned_answers()
    assert json.loads(answers["json"][1])["object"] == "chat.completion"
    for kind, events in (("sse20", 20), ("sse100", 100)):
        content_type, body = answers[kind]
        assert content_type == "text/event-stream"
        *data, done, tail = body.split(b"\n\n")
        assert len(data) == events and done == b"data: [DONE]" and tail == b""
        for event in data:
            check_event(event)


@pytest.fixture
def upstream() -> Iterator[run.Proxy]:
    """The benchmark's nginx upstream on a free port (a folder under /tmp: nginx's
    workers run as nobody when it is started as root)."""
    nginx = run.find("nginx")
    assert nginx, "nginx is not installed (scripts/test.sh installs Debian's nginx-light)"
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o755)
        port = run.free_port()
        conf = run.nginx_upstream_conf(workdir, port)
        proxy_conf = run.nginx_proxy_conf(workdir, run.free_port(), port)
        for config in (conf, proxy_conf):
            checked = subprocess.run(
                [*run.nginx_command(config), "-t"], capture_output=True, text=True
            )
            assert checked.returncode == 0, checked.stderr
        proxy = run.Proxy("upstream", "the canned answers", "0", port)
        proxy.process = subprocess.Popen(run.nginx_command(conf), stderr=subprocess.DEVNULL)
        try:
            run.wait_listening(proxy, "/", timeout=10)
            yield proxy
        finally:
            proxy.process.terminate()
            proxy.process.wait(timeout=10)


def test_nginx_upstream_answers_posts_with_the_canned_answers(upstream: run.Proxy) -> None:
    for case in run.CASES:
        run.check_answer(upstream, case)  # raises on a wrong status, body or stream


def test_wrk_script_reports_a_run(upstream: run.Proxy) -> None:
    assert run.find("wrk"), "wrk is not installed (scripts/test.sh installs Debian's)"
    case = run.Case("sse20", 1)
    figures = run.run_wrk(upstream.url(case), case, 1)
    assert figures["requests"] > 100 and figures["rps"] > 100
    assert figures["non_2xx"] == 0 and figures["socket_errors"] == 0
    assert 0 < figures["p50_ms"] <= figures["p99_ms"]
