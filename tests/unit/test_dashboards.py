"""The Grafana dashboards query only metrics the gateway exports (see
`tests/exported_metrics.py`), and the provisioning files load them from where compose
mounts them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import RunningUpstream
from tests.exported_metrics import exported_samples, metric_names, scrape, unknown_metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
PROVISIONING = ROOT / "grafana" / "provisioning"
COMPOSE = ROOT / "deploy" / "compose.yaml"


def _dashboard(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)


def panel_expressions(dashboard: dict[str, Any]) -> list[str]:
    """Every `expr` of every target, in panels and in the panels of rows."""
    return [
        node["expr"]
        for node in _walk(dashboard.get("panels", []))
        if isinstance(node.get("expr"), str)
    ]


def template_queries(dashboard: dict[str, Any]) -> list[str]:
    """Every query of a templating variable (Grafana stores a string or, since 10, an
    object with `query`, besides the `definition` shown in the editor)."""
    queries = []
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        for text in (query, variable.get("definition")):
            if isinstance(text, str) and text:
                queries.append(text)
    return queries


@pytest.fixture
async def exposition(upstream: RunningUpstream) -> str:
    return await scrape(upstream.url)


def test_there_are_dashboards_with_queries() -> None:
    assert DASHBOARDS, "no grafana/dashboards/*.json"
    for path in DASHBOARDS:
        dashboard = _dashboard(path)
        exprs = panel_expressions(dashboard)
        assert exprs, f"{path.name}: no panel queries"
        for expr in exprs + template_queries(dashboard):
            assert metric_names(expr), f"{path.name}: a query selects no gateway metric: {expr}"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
async def test_dashboard_queries_only_exported_metrics(path: Path, exposition: str) -> None:
    exported = exported_samples(exposition)
    dashboard = _dashboard(path)
    exprs = panel_expressions(dashboard) + template_queries(dashboard)
    unknown = unknown_metrics(exprs, exported)
    assert not unknown, "\n".join(
        f"{explain(name, exported)}; in: {expr}" for name, expr in sorted(unknown.items())
    )


def explain(name: str, exported: dict[str, str]) -> str:
    """Why a name is not exported: a family queried without its type's suffix (a counter
    without `_total`, a histogram without `_bucket`...), or no such family at all."""
    family = name
    for suffix in ("_bucket", "_count", "_sum", "_total", "_created"):
        if name.endswith(suffix):
            family = name.removesuffix(suffix)
            break
    for candidate in (name, family):
        samples = sorted(s for s, f in exported.items() if f == candidate)
        if samples:
            return f"{name}: family {candidate} is exported as {', '.join(samples)}"
    return f"{name}: the gateway exports no such metric"


async def test_the_exported_set_is_what_the_checker_expects(exposition: str) -> None:
    """The check itself: it knows the suffixes of each family type, and would catch a
    misspelled name, a counter without `_total` and a histogram queried as a plain name."""
    exported = exported_samples(exposition)
    for name in (
        "llm_gateway_requests_total",
        "llm_gateway_request_duration_seconds_bucket",
        "llm_gateway_request_duration_seconds_count",
        "llm_gateway_request_duration_seconds_sum",
        "llm_gateway_time_to_first_token_seconds_bucket",
        "llm_gateway_upstream_attempt_duration_seconds_bucket",
        "llm_gateway_tokens_total",
        "llm_gateway_requests_in_flight",
        "llm_gateway_rate_limited_requests_total",
        "llm_gateway_rate_limiter_errors_total",
        "llm_gateway_rate_limiter_fail_open_total",
        "llm_gateway_upstream_retries_total",
        "llm_gateway_upstream_retries_over_budget_total",
        "llm_gateway_upstream_ejections_total",
        "llm_gateway_upstream_healthy",
        "llm_gateway_safety_verdicts_total",
    ):
        assert name in exported, name
    bad = [
        'sum(rate(llm_gateway_request_total{team=~"$team"}[5m]))',
        "rate(llm_gateway_requests[5m])",
        "llm_gateway_request_duration_seconds",
        "llm_gateway_requests_in_flight_total",
    ]
    assert set(unknown_metrics(bad, exported)) == {
        "llm_gateway_request_total",
        "llm_gateway_requests",
        "llm_gateway_request_duration_seconds",
        "llm_gateway_requests_in_flight_total",
    }
    # Label values are not metric names.
    assert metric_names('x{job="llm_gateway_nothing"} + llm_gateway_upstream_healthy') == {
        "llm_gateway_upstream_healthy"
    }


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_shape(path: Path) -> None:
    """What Grafana needs to load it as provisioned: a uid, unique panel ids, a grid
    position for every panel, the provisioned datasource everywhere, team and model
    variables."""
    dashboard = _dashboard(path)
    assert dashboard["uid"] and dashboard["title"]
    assert dashboard["schemaVersion"] >= 36
    panels = [
        node
        for node in _walk(dashboard["panels"])
        if "gridPos" in node and "type" in node and "id" in node
    ]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "prometheus", panel["title"]
            assert target["refId"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    for name in ("team", "model"):
        assert variables[name]["datasource"]["uid"] == "prometheus"
        assert any(
            query.startswith("label_values(") and query.rstrip(")").endswith(name)
            for query in template_queries({"templating": {"list": [variables[name]]}})
        ), name


def test_provisioning_points_at_the_dashboards() -> None:
    sources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yaml").read_text())
    [source] = sources["datasources"]
    assert source["type"] == "prometheus"
    assert source["uid"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"

    providers = yaml.safe_load((PROVISIONING / "dashboards" / "dashboards.yaml").read_text())
    [provider] = providers["providers"]
    assert provider["type"] == "file"
    folder = provider["options"]["path"]
    assert folder == "/var/lib/grafana/dashboards"

    # compose mounts grafana/dashboards (the files above) exactly there, and the
    # provisioning folder where Grafana reads it.
    compose = yaml.safe_load(COMPOSE.read_text())
    mounts = {}
    for volume in compose["services"]["grafana"]["volumes"]:
        source_path, target, *_ = volume.split(":")
        mounts[target] = (COMPOSE.parent / source_path).resolve()
    assert mounts[folder] == (ROOT / "grafana" / "dashboards").resolve()
    assert mounts["/etc/grafana/provisioning"] == PROVISIONING.resolve()


def test_prometheus_scrapes_the_gateway() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    [job] = config["scrape_configs"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    # Each replica of the compose stack on its own (tests/deploy checks these are exactly
    # the replicas HAProxy balances).
    assert job["static_configs"][0]["targets"] == ["gateway-1:8080", "gateway-2:8080"]
    assert job.get("scrape_interval", config["global"]["scrape_interval"]) == "15s"
