"""What a live gateway exports to Prometheus, and which gateway metrics a PromQL expression
selects: shared by the checks that dashboards and alert rules query only exported metrics.

The exported set comes from a real gateway: the app is built from the test config, serves
one request, and its `GET /metrics` is parsed with prometheus_client's own parser. Every
metric family is listed there (labelled ones with no sample yet too, by their HELP and TYPE
lines), so a metric counts as exported even if this one request did not touch it."""

from __future__ import annotations

import re

from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import build_app
from tests.conftest import auth, chat_body, config_dict, make_config

_METRIC = re.compile(r"\bllm_gateway_[A-Za-z0-9_]*")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
# The sample names Prometheus stores for one metric family of each type.
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
    "untyped": ("",),
    "info": ("_info",),
    "stateset": ("",),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
}


def metric_names(expr: str) -> set[str]:
    """The gateway metric names a PromQL expression selects (label values and other string
    literals left out)."""
    return set(_METRIC.findall(_STRING.sub('""', expr)))


def exported_samples(exposition: str) -> dict[str, str]:
    """Every sample name the exposition's metric families produce, to the family name."""
    samples: dict[str, str] = {}
    for family in text_string_to_metric_families(exposition):
        for suffix in _SUFFIXES[family.type]:
            samples[family.name + suffix] = family.name
        for sample in family.samples:
            samples[sample.name] = family.name
    return samples


def unknown_metrics(exprs: list[str], exported: dict[str, str]) -> dict[str, str]:
    """Each referenced name the gateway does not export, to the expression using it."""
    return {name: expr for expr in exprs for name in metric_names(expr) if name not in exported}


async def scrape(upstream_url: str) -> str:
    """`GET /metrics` of a gateway (the test config, on `upstream_url`) after one request."""
    config = make_config(config_dict(upstream_url))
    client = TestClient(TestServer(build_app(config)))
    await client.start_server()
    try:
        answer = await client.post("/v1/chat/completions", json=chat_body(), headers=auth())
        assert answer.status == 200, await answer.text()
        metrics = await client.get("/metrics")
        assert metrics.status == 200
        return await metrics.text()
    finally:
        await client.close()
