"""The rendered Kubernetes base does what deploy/README.md says, by rules the API schemas
cannot express: probes on /readyz and /healthz, requests and limits for every container, a
grace period above the preStop pause plus the drain (server.shutdown_timeout, read from the
rendered configuration), a non-root read-only container without privileges (as the image's
USER), the configuration and policies mounted where the configuration expects them from
ConfigMaps whose names carry a hash of their content (a change rolls the pods), upstream
keys from a Secret only; the Service, HorizontalPodAutoscaler, PodDisruptionBudget,
NetworkPolicy and ServiceMonitor all aimed at these pods. `base_problems` says what is
wrong, and is shown to catch broken copies."""

from __future__ import annotations

import copy
import posixpath
from collections.abc import Callable
from importlib import metadata
from typing import Any

import pytest
import yaml

from tests.deploy.dockerfile import final_stage
from tests.deploy.kubernetes import HASHED, config_maps, only, render

IMAGE = final_stage()
# The image the base deploys is the one this checkout builds (an overlay renames it).
VERSION = metadata.version("llm-gateway")


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def pod_problems(docs: list[dict[str, Any]]) -> list[str]:
    problems: list[str] = []
    deployment = only(docs, "Deployment")
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    [container] = pod["containers"]
    ports = {port["name"]: port["containerPort"] for port in container.get("ports", [])}

    if container.get("image") != f"llm-gateway:{VERSION}":
        problems.append(f"image: {container.get('image')}, not this version's ({VERSION})")
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = container.get(probe, {}).get("httpGet", {})
        if get.get("path") != path or get.get("port") not in (*ports, *ports.values()):
            problems.append(f"{probe}: not an HTTP GET of {path} on the gateway's port")

    for name in ("requests", "limits"):
        given = container.get("resources", {}).get(name, {})
        if not {"cpu", "memory"} <= set(given):
            problems.append(f"resources: no {name} for cpu and memory")

    configs = config_maps(docs)
    config = yaml.safe_load(configs["llm-gateway-config"]["data"]["config.yaml"])
    drain = float(config.get("server", {}).get("shutdown_timeout", 30.0))
    pre_stop = container.get("lifecycle", {}).get("preStop", {})
    command = pre_stop.get("exec", {}).get("command", [])
    pause = float(command[1]) if command[:1] == ["sleep"] and len(command) == 2 else 0.0
    pause = float(pre_stop.get("sleep", {}).get("seconds", pause))
    if pause < 1:
        problems.append("preStop: no pause before SIGTERM (endpoints are removed meanwhile)")
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if grace <= pause + drain + 1:
        problems.append(
            f"terminationGracePeriodSeconds: {grace} is not above the preStop pause ({pause} s)"
            f" + server.shutdown_timeout ({drain} s) + 1 s"
        )
    if spec.get("strategy", {}).get("rollingUpdate", {}).get("maxUnavailable") != 0:
        problems.append("strategy: a rollout may stop a pod before its replacement is ready")
    if "replicas" in spec:
        problems.append("replicas: set in the Deployment, which the autoscaler owns")

    pod_security, security = pod.get("securityContext", {}), container.get("securityContext", {})
    user = IMAGE.last("USER")
    uid = int(user.args.split(":")[0]) if user else 0
    if not (security.get("runAsNonRoot") or pod_security.get("runAsNonRoot")):
        problems.append("securityContext: runAsNonRoot is not set")
    if security.get("runAsUser", pod_security.get("runAsUser", uid)) != uid:
        problems.append(f"securityContext: runs as another user than the image's ({uid})")
    if security.get("readOnlyRootFilesystem") is not True:
        problems.append("securityContext: the root filesystem is writable")
    if security.get("allowPrivilegeEscalation") is not False:
        problems.append("securityContext: privilege escalation is allowed")
    if "ALL" not in security.get("capabilities", {}).get("drop", []):
        problems.append("securityContext: capabilities are not all dropped")

    # The configuration where the image's command reads it, the policies where it says.
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    config_path = env.get("GATEWAY_CONFIG") or IMAGE.env()["GATEWAY_CONFIG"]
    config_dir = posixpath.dirname(config_path)
    policies_dir = posixpath.normpath(posixpath.join(config_dir, config.get("policies_dir", "")))
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounted = {m["mountPath"]: volumes.get(m["name"], {}) for m in container["volumeMounts"]}
    for path, generator in (
        (config_dir, "llm-gateway-config"),
        (policies_dir, "llm-gateway-policies"),
    ):
        name = mounted.get(path, {}).get("configMap", {}).get("name", "")
        match = HASHED.match(name)
        if not match or match["base"] != generator:
            problems.append(
                f"volumes: {path} is not the ConfigMap {generator} with its content hash"
            )
        elif generator not in configs or configs[generator]["metadata"]["name"] != name:
            problems.append(f"volumes: {path} mounts {name}, which the base does not have")
    for variable in [e for e in container.get("env", []) if "value" in e]:
        if variable["name"].endswith(("_KEY", "_TOKEN", "_SECRET", "PASSWORD")):
            problems.append(f"env: {variable['name']} is written in the manifest")
    if not any("secretRef" in source for source in container.get("envFrom", [])):
        problems.append("envFrom: the upstream keys do not come from a Secret")
    if any(doc["kind"] == "Secret" for doc in docs):
        problems.append("a Secret is part of the base (keys are never in the repository)")
    return problems


def neighbour_problems(docs: list[dict[str, Any]]) -> list[str]:
    problems: list[str] = []
    deployment = only(docs, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    port_names = {port["name"] for port in container["ports"]}

    service = only(docs, "Service")
    if not selects(service["spec"]["selector"], labels):
        problems.append("Service: does not select the gateway's pods")
    if {p["targetPort"] for p in service["spec"]["ports"]} - port_names:
        problems.append("Service: targets a port the container does not name")

    hpa = only(docs, "HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    if (target["kind"], target["name"]) != ("Deployment", deployment["metadata"]["name"]):
        problems.append("HorizontalPodAutoscaler: scales something else")
    minimum = hpa["spec"].get("minReplicas", 1)
    if minimum < 2:
        problems.append("HorizontalPodAutoscaler: fewer than two replicas")

    pdb = only(docs, "PodDisruptionBudget")
    if not selects(pdb["spec"]["selector"]["matchLabels"], labels):
        problems.append("PodDisruptionBudget: does not select the gateway's pods")
    if pdb["spec"].get("maxUnavailable", minimum) >= minimum:
        problems.append("PodDisruptionBudget: may take every replica at once")

    policy = only(docs, "NetworkPolicy")["spec"]
    if not selects(policy["podSelector"]["matchLabels"], labels):
        problems.append("NetworkPolicy: does not select the gateway's pods")
    if set(policy.get("policyTypes", [])) != {"Ingress", "Egress"}:
        problems.append("NetworkPolicy: does not restrict both directions")
    for rule in policy.get("ingress", []):
        peers = rule.get("from", [])
        if not peers or any("ipBlock" in peer for peer in peers):
            problems.append("NetworkPolicy: admits any address")
        if {p["port"] for p in rule.get("ports", [{"port": None}])} - port_names:
            problems.append("NetworkPolicy: admits other ports than the gateway's")
    egress = {
        (port.get("port"), port.get("protocol", "TCP"))
        for rule in policy.get("egress", [])
        for port in rule.get("ports", [{}])
    }
    for needed in ((53, "UDP"), (53, "TCP"), (6379, "TCP"), (443, "TCP")):
        if needed not in egress:
            problems.append(f"NetworkPolicy: no way out to port {needed[0]}/{needed[1]}")
    if (None, "TCP") in egress:
        problems.append("NetworkPolicy: lets everything out")

    monitor = only(docs, "ServiceMonitor")["spec"]
    if not selects(monitor["selector"]["matchLabels"], service["metadata"]["labels"]):
        problems.append("ServiceMonitor: does not select the Service")
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["endpoints"]:
        if endpoint.get("port") not in service_ports or endpoint.get("path") != "/metrics":
            problems.append("ServiceMonitor: does not scrape the Service's port at /metrics")
    return problems


def base_problems(docs: list[dict[str, Any]]) -> list[str]:
    return pod_problems(docs) + neighbour_problems(docs)


DOCS = render()


def test_the_base_keeps_every_rule() -> None:
    assert base_problems(DOCS) == []


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = only(docs, "Deployment")["spec"]["template"]["spec"][
        "containers"
    ]
    return containers[0]


def pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = only(docs, "Deployment")["spec"]["template"]["spec"]
    return spec


def longer_drain(docs: list[dict[str, Any]]) -> None:
    data = config_maps(docs)["llm-gateway-config"]["data"]
    config = yaml.safe_load(data["config.yaml"])
    config["server"]["shutdown_timeout"] = 60
    data["config.yaml"] = yaml.safe_dump(config)


def unhashed_config(docs: list[dict[str, Any]]) -> None:
    config_maps(docs)["llm-gateway-config"]["metadata"]["name"] = "llm-gateway-config"
    for volume in pod(docs)["volumes"]:
        if volume["name"] == "config":
            volume["configMap"]["name"] = "llm-gateway-config"


def key_in_manifest(docs: list[dict[str, Any]]) -> None:
    container(docs)["env"].append({"name": "OPENAI_API_KEY", "value": "sk-..."})


def open_ingress(docs: list[dict[str, Any]]) -> None:
    only(docs, "NetworkPolicy")["spec"]["ingress"][0]["from"].append(
        {"ipBlock": {"cidr": "0.0.0.0/0"}}
    )


def no_dns(docs: list[dict[str, Any]]) -> None:
    only(docs, "NetworkPolicy")["spec"]["egress"].pop(0)


BROKEN: dict[str, tuple[Callable[[list[dict[str, Any]]], object], str]] = {
    "another version": (
        lambda d: container(d).update(image="llm-gateway:0.0.9"),
        "not this version's",
    ),
    "no resources": (lambda d: container(d).pop("resources"), "resources: no requests"),
    "no limits": (lambda d: container(d)["resources"].pop("limits"), "resources: no limits"),
    "readiness on healthz": (
        lambda d: container(d)["readinessProbe"]["httpGet"].update(path="/healthz"),
        "readinessProbe",
    ),
    "no liveness": (lambda d: container(d).pop("livenessProbe"), "livenessProbe"),
    "grace within the drain": (
        lambda d: pod(d).update(terminationGracePeriodSeconds=30),
        "terminationGracePeriodSeconds: 30",
    ),
    "drain longer than grace": (longer_drain, "terminationGracePeriodSeconds"),
    "no preStop": (lambda d: container(d).pop("lifecycle"), "preStop: no pause"),
    "root": (
        lambda d: (
            pod(d)["securityContext"].pop("runAsNonRoot"),
            container(d)["securityContext"].pop("runAsNonRoot"),
        ),
        "runAsNonRoot",
    ),
    "writable root": (
        lambda d: container(d)["securityContext"].update(readOnlyRootFilesystem=False),
        "root filesystem is writable",
    ),
    "escalation": (
        lambda d: container(d)["securityContext"].pop("allowPrivilegeEscalation"),
        "privilege escalation",
    ),
    "capabilities kept": (
        lambda d: container(d)["securityContext"].pop("capabilities"),
        "capabilities",
    ),
    "config without hash": (unhashed_config, "with its content hash"),
    "key in the manifest": (key_in_manifest, "OPENAI_API_KEY is written"),
    "replicas fixed": (
        lambda d: only(d, "Deployment")["spec"].update(replicas=3),
        "the autoscaler owns",
    ),
    "service elsewhere": (
        lambda d: only(d, "Service")["spec"].update(selector={"app": "other"}),
        "Service: does not select",
    ),
    "one replica": (
        lambda d: only(d, "HorizontalPodAutoscaler")["spec"].update(minReplicas=1),
        "fewer than two replicas",
    ),
    "disrupt everything": (
        lambda d: only(d, "PodDisruptionBudget")["spec"].update(maxUnavailable=2),
        "every replica at once",
    ),
    "ingress from anywhere": (open_ingress, "admits any address"),
    "no DNS": (no_dns, "port 53/UDP"),
    "monitor wrong port": (
        lambda d: only(d, "ServiceMonitor")["spec"]["endpoints"][0].update(port="metrics"),
        "ServiceMonitor: does not scrape",
    ),
}


@pytest.mark.parametrize("name", BROKEN)
def test_a_broken_copy_is_caught(name: str) -> None:
    change, expected = BROKEN[name]
    docs = copy.deepcopy(DOCS)
    change(docs)

    problems = base_problems(docs)

    assert any(expected in problem for problem in problems), problems
