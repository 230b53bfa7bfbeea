"""The compose stack fits together: at least two gateway replicas, the same image command
and mounts for each; HAProxy balances exactly those replicas and Prometheus scrapes exactly
those; the mounted configuration loads (policies found where it says), counts its limits
in the stack's Redis, reaches the fake upstream where that service listens, trusts
HAProxy's fixed address for X-Forwarded-For and drains within the stop grace period; only
127.0.0.1 ports are published, and none of a gateway's. `stack_problems` says what does
not fit, and is shown to catch broken copies."""

from __future__ import annotations

import copy
import ipaddress
import re
import shutil
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from gateway.config import ConfigError, load_config
from tests.deploy.dockerfile import ROOT, final_stage

DEPLOY = ROOT / "deploy"
IMAGE_CONFIG = PurePosixPath(final_stage().env()["GATEWAY_CONFIG"])
_SERVER = re.compile(r"^\s*server\s+(\S+)\s+(\S+)", re.MULTILINE)
_DURATION = re.compile(r"^(?:(\d+)m)?(?:(\d+)s)?$")


def seconds(duration: str) -> int:
    match = _DURATION.match(duration)
    assert match and duration, duration
    return int(match[1] or 0) * 60 + int(match[2] or 0)


def mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path, of a service's bind mounts."""
    found = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        found[target] = (DEPLOY / source).resolve()
    return found


def stack_problems(
    compose: dict[str, Any], haproxy: str, prometheus: dict[str, Any], work: Path
) -> list[str]:
    problems: list[str] = []
    services: dict[str, dict[str, Any]] = compose["services"]
    gateways = {
        name: s
        for name, s in services.items()
        if s.get("image") == "llm-gateway:local" and "command" not in s
    }
    if len(gateways) < 2:
        problems.append(f"replicas: {sorted(gateways)} (two at least)")
    replicas = list(gateways.values())
    if any(replica != replicas[0] for replica in replicas):
        problems.append("replicas: not all alike")
    for name, service in gateways.items():
        if service.get("ports"):
            problems.append(f"{name}: publishes ports (the way in is the balancer)")

    backends = dict(_SERVER.findall(haproxy))
    wanted = {f"{name}:8080" for name in gateways}
    if set(backends.values()) != wanted:
        problems.append(f"haproxy: balances {sorted(backends.values())}, not {sorted(wanted)}")
    [job] = prometheus["scrape_configs"]
    targets = {t for config in job["static_configs"] for t in config["targets"]}
    if targets != wanted:
        problems.append(f"prometheus: scrapes {sorted(targets)}, not {sorted(wanted)}")

    lb = services.get("lb", {})
    if mounts(lb).get("/usr/local/etc/haproxy/haproxy.cfg") != DEPLOY / "haproxy.cfg":
        problems.append("lb: does not mount deploy/haproxy.cfg")
    for name, service in services.items():
        for port in service.get("ports", []):
            if not str(port).startswith("127.0.0.1:"):
                problems.append(f"{name}: publishes {port} beyond 127.0.0.1")

    for name, service in gateways.items():
        mounted = mounts(service)
        config_dir = mounted.get(str(IMAGE_CONFIG.parent))
        if config_dir is None:
            problems.append(f"{name}: nothing mounted at {IMAGE_CONFIG.parent}")
            continue
        # The container's /etc/llm-gateway, rebuilt from the mounts, and the config loaded
        # from it as the image's command loads it.
        root = work / name
        for target, source in mounted.items():
            shutil.copytree(source, root / target.lstrip("/"))
        environ = {k: str(v) for k, v in service.get("environment", {}).items()}
        try:
            config = load_config(root / str(IMAGE_CONFIG).lstrip("/"), environ=environ)
        except ConfigError as error:
            problems.append(f"{name}: its config does not load: {error.problems}")
            continue
        redis = urlsplit(config.rate_limits.redis_url or "").hostname
        if redis not in services:
            problems.append(f"{name}: rate_limits.redis_url is not the stack's Redis ({redis})")
        elif service.get("depends_on", {}).get(redis, {}).get("condition") != "service_healthy":
            problems.append(f"{name}: does not wait for Redis to be healthy")
        for upstream in config.upstreams.values():
            host, port = upstream.base_url.host, upstream.base_url.port
            command = " ".join(services.get(host or "", {}).get("command", []))
            if f"--port={port}" not in command:
                problems.append(f"{name}: upstream {upstream.base_url} is no service's port")
        lb_address = lb.get("networks", {}).get("default", {}).get("ipv4_address")
        trusted = config.auth_failures.trusted_proxies
        if not lb_address or not any(ipaddress.ip_address(lb_address) in n for n in trusted):
            problems.append(f"{name}: does not trust the balancer's address {lb_address}")
        grace = seconds(service.get("stop_grace_period", "10s"))
        if grace <= config.server.shutdown_timeout + 1:
            problems.append(
                f"{name}: stop_grace_period {grace} s is not above the drain "
                f"(server.shutdown_timeout {config.server.shutdown_timeout} s)"
            )
    subnets = [
        ipaddress.ip_network(c["subnet"])
        for c in compose.get("networks", {}).get("default", {}).get("ipam", {}).get("config", [])
    ]
    lb_address = lb.get("networks", {}).get("default", {}).get("ipv4_address", "")
    if not lb_address or not any(ipaddress.ip_address(lb_address) in s for s in subnets):
        problems.append("lb: its fixed address is not in the stack's subnet")
    return problems


COMPOSE = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
HAPROXY = (DEPLOY / "haproxy.cfg").read_text()
PROMETHEUS = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())


def test_the_stack_fits_together(tmp_path: Path) -> None:
    assert stack_problems(COMPOSE, HAPROXY, PROMETHEUS, tmp_path) == []


def third_replica(compose: dict[str, Any]) -> None:
    compose["services"]["gateway-3"] = copy.deepcopy(compose["services"]["gateway-1"])


def short_grace(compose: dict[str, Any]) -> None:
    for name in ("gateway-1", "gateway-2"):
        compose["services"][name]["stop_grace_period"] = "30s"


def public_port(compose: dict[str, Any]) -> None:
    compose["services"]["grafana"]["ports"] = ["3000:3000"]


def no_policies(compose: dict[str, Any]) -> None:
    for name in ("gateway-1", "gateway-2"):
        compose["services"][name]["volumes"] = compose["services"][name]["volumes"][:1]


def lb_moved(compose: dict[str, Any]) -> None:
    compose["services"]["lb"]["networks"]["default"]["ipv4_address"] = "10.201.80.11"


BROKEN = {
    "a replica the balancer does not know": (third_replica, "haproxy: balances"),
    "grace period within the drain": (short_grace, "is not above the drain"),
    "a port for everyone": (public_port, "beyond 127.0.0.1"),
    "policies not mounted": (no_policies, "its config does not load"),
    "balancer on another address": (lb_moved, "does not trust the balancer's address"),
}


@pytest.mark.parametrize("name", BROKEN)
def test_a_broken_copy_is_caught(name: str, tmp_path: Path) -> None:
    change, expected = BROKEN[name]
    compose = copy.deepcopy(COMPOSE)
    change(compose)

    problems = stack_problems(compose, HAPROXY, PROMETHEUS, tmp_path)

    assert any(expected in problem for problem in problems), problems


def test_a_replica_missing_from_prometheus_is_caught(tmp_path: Path) -> None:
    prometheus = copy.deepcopy(PROMETHEUS)
    prometheus["scrape_configs"][0]["static_configs"][0]["targets"] = ["gateway-1:8080"]

    problems = stack_problems(COMPOSE, HAPROXY, prometheus, tmp_path)

    assert any("prometheus: scrapes" in problem for problem in problems), problems
