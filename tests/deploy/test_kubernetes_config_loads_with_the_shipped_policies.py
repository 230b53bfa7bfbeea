"""The configuration the Kubernetes base ships loads as the pods load it: the rendered
ConfigMaps written out as they are mounted (config/config.yaml, policies/), every upstream
key given as the Secret would give it. Its policies are the shipped ones, byte for byte:
kustomize reads no file outside its folder, so deploy/kubernetes/policies/ holds copies of
policies/, and this keeps them from drifting."""

from __future__ import annotations

from pathlib import Path

from gateway.config import load_config
from tests.deploy.dockerfile import ROOT
from tests.deploy.kubernetes import BASE, config_maps, render


def test_the_rendered_config_loads(tmp_path: Path) -> None:
    maps = config_maps(render())
    for folder, generator in (
        ("config", "llm-gateway-config"),
        ("policies", "llm-gateway-policies"),
    ):
        (tmp_path / folder).mkdir()
        for key, text in maps[generator]["data"].items():
            (tmp_path / folder / key).write_text(text)
    keys = {"OPENAI_API_KEY": "sk-test", "ANTHROPIC_API_KEY": "sk-ant-test"}

    config = load_config(tmp_path / "config" / "config.yaml", environ=keys)

    assert {u.api_key_env.variable for u in config.upstreams.values() if u.api_key_env} == set(keys)
    assert config.rate_limits.redis_url, "the replicas must share their limits"
    shipped = {p.stem for p in (ROOT / "policies").glob("*.yaml")}
    assert shipped <= set(config.policies)


def test_the_policies_are_the_shipped_ones() -> None:
    shipped = {p.name: p.read_bytes() for p in (ROOT / "policies").glob("*.yaml")}
    in_base = {p.name: p.read_bytes() for p in (BASE / "policies").glob("*.yaml")}
    assert shipped
    assert in_base == shipped
    kustomization = (BASE / "kustomization.yaml").read_text()
    for name in shipped:
        assert f"- policies/{name}\n" in kustomization, f"{name} is not in the ConfigMap"
