"""deploy/prometheus/alerts.yaml: Prometheus accepts the rules (`promtool check rules`),
each fires in its case of tests/deploy/alerts_test.yaml and stays quiet in another
(`promtool test rules`, the test command installs promtool from Debian's `prometheus`),
every rule has both cases, and the rules query only metrics the gateway exports."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import RunningUpstream
from tests.exported_metrics import exported_samples, scrape, unknown_metrics

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yaml"
CASES = Path(__file__).with_name("alerts_test.yaml")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    found = shutil.which("promtool")
    assert found, "promtool is missing: scripts/test.sh installs Debian's prometheus"
    return subprocess.run(
        [found, *args], cwd=CASES.parent, capture_output=True, text=True, timeout=60, check=False
    )


def rules() -> list[dict[str, Any]]:
    loaded = yaml.safe_load(RULES.read_text())
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def test_prometheus_accepts_the_rules() -> None:
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules())} rules found" in checked.stdout


def test_every_case_passes() -> None:
    tested = promtool("test", "rules", CASES.name)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_rule_has_a_firing_and_a_quiet_case() -> None:
    cases = yaml.safe_load(CASES.read_text())["tests"]
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in cases:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = {rule["alert"] for rule in rules()}
    assert alerts == fires == quiet


def test_a_broken_case_fails_so_the_cases_are_really_checked(tmp_path: Path) -> None:
    cases = yaml.safe_load(CASES.read_text())
    cases["rule_files"] = [str(RULES)]
    for check in cases["tests"][0]["alert_rule_test"]:
        check["exp_alerts"] = []  # the firing case now expects silence
    broken = tmp_path / "broken_test.yaml"
    broken.write_text(yaml.safe_dump(cases))
    tested = promtool("test", "rules", str(broken))
    assert tested.returncode != 0
    assert "LLMGatewayErrorRatioHigh" in tested.stdout + tested.stderr


@pytest.fixture
async def exposition(upstream: RunningUpstream) -> str:
    return await scrape(upstream.url)


async def test_rules_query_only_exported_metrics(exposition: str) -> None:
    exprs = [rule["expr"] for rule in rules()]
    assert unknown_metrics(exprs, exported_samples(exposition)) == {}


def test_the_compose_prometheus_loads_these_rules() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    mounts = {}
    for volume in compose["services"]["prometheus"]["volumes"]:
        source, target = volume.split(":")[:2]
        mounts[target] = (ROOT / "deploy" / source).resolve()
    assert [mounts.get(path) for path in config["rule_files"]] == [RULES.resolve()]


def test_the_config_of_the_recipe_without_docker_is_valid_with_its_rules(tmp_path: Path) -> None:
    """deploy/README.md's Prometheus without Docker: its two substitutions of prometheus.yml
    give a configuration promtool accepts, rules included."""
    text = (ROOT / "deploy" / "prometheus.yml").read_text()
    text = text.replace('"gateway-1:8080", "gateway-2:8080"', '"127.0.0.1:8080"')
    text = text.replace("/etc/prometheus/alerts.yaml", str(RULES))
    config = tmp_path / "prometheus.yml"
    config.write_text(text)
    checked = promtool("check", "config", str(config))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 1 rule files found" in checked.stdout
