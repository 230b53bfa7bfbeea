"""Policy files: their schema, their composition per team, and the configuration errors
they produce (naming the file, or both policies of a conflict)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.cli import main
from gateway.config import ConfigError, load_config, parse_config
from gateway.policies import Policy, compose, load_policy_files
from tests.conftest import UPSTREAM_KEY, UPSTREAM_KEY_ENV, config_dict

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "policies"


def with_policies(policies: dict[str, Any], team_policies: list[str]) -> dict[str, Any]:
    raw = config_dict("http://127.0.0.1:9")
    raw["models"]["guard"] = {"upstreams": [{"upstream": "fake"}]}
    raw["policies"] = policies
    raw["teams"]["team-a"]["policies"] = team_policies
    return raw


def problems(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as refused:
        parse_config(raw, environ={UPSTREAM_KEY_ENV: UPSTREAM_KEY})
    return refused.value.problems


def test_shipped_policies_load_and_compose_without_conflict() -> None:
    policies, found = load_policy_files(SHIPPED)

    assert found == []
    assert set(policies) >= {"hipaa", "safety-llama-guard", "default-caps"}
    team, conflicts = compose(["hipaa", "safety-llama-guard", "default-caps"], policies)
    assert conflicts == []
    assert team.force_hipaa
    assert team.safety is not None and team.safety.model == "meta-llama/Llama-Guard-4-12B"
    assert team.max_tokens is not None and (team.max_tokens.limit, team.max_tokens.action) == (
        4096,
        "clamp",
    )
    assert team.forbidden_params == {"logit_bias"}


def test_two_policies_setting_one_rule_differently_is_a_config_error_naming_both() -> None:
    raw = with_policies(
        {
            "small": {"caps": {"max_tokens": {"limit": 100}}},
            "large": {"caps": {"max_tokens": {"limit": 1000}}},
            "same": {"caps": {"max_tokens": {"limit": 100}}},
        },
        ["small", "large"],
    )

    assert problems(raw) == [
        "teams.team-a.policies: policies 'small' and 'large' both set caps.max_tokens"
    ]
    raw["teams"]["team-a"]["policies"] = ["small", "same"]  # equal values agree
    parse_config(raw, environ={UPSTREAM_KEY_ENV: UPSTREAM_KEY})


def test_unknown_policy_and_unknown_safety_model_are_named() -> None:
    raw = with_policies({"guarded": {"safety": {"model": "no-such-guard"}}}, ["guarded", "nope"])

    assert problems(raw) == [
        "teams.team-a.policies[1]: unknown policy 'nope' (known: guarded)",
        "policies.guarded.safety.model: unknown model 'no-such-guard' "
        "(the safety model must be configured under models:)",
    ]


@pytest.mark.parametrize(
    ("policy", "fragment"),
    [
        ({"caps": {"forbidden_params": ["not_a_param"]}}, "not contract parameters: not_a_param"),
        ({"caps": {"defaults": {"messages": []}}}, "cannot default messages"),
        ({"caps": {"defaults": {"temperature": 3}}}, "temperature: Input should be less than"),
        ({"caps": {"max_tokens": {"limit": 0}}}, "caps.max_tokens.limit"),
        ({"safety": {"model": "g", "on_unavailable": "maybe"}}, "safety.on_unavailable"),
        ({"compliance": {"force": "gdpr"}}, "compliance.force"),
        ({"cap": {}}, "cap: Extra inputs are not permitted"),
    ],
)
def test_a_wrong_field_in_a_policy_file_names_the_file_and_field(
    tmp_path: Path, policy: dict[str, Any], fragment: str
) -> None:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "broken.yaml").write_text(yaml.safe_dump(policy))
    raw = config_dict("http://127.0.0.1:9") | {"policies_dir": "policies"}
    (tmp_path / "gateway.yaml").write_text(yaml.safe_dump(raw))

    with pytest.raises(ConfigError) as refused:
        load_config(tmp_path / "gateway.yaml", environ={UPSTREAM_KEY_ENV: UPSTREAM_KEY})

    [problem] = refused.value.problems
    assert problem.startswith(f"{tmp_path / 'policies' / 'broken.yaml'}: ")
    assert fragment in problem


def test_check_config_validates_the_policies_it_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(UPSTREAM_KEY_ENV, UPSTREAM_KEY)
    raw = config_dict("http://127.0.0.1:9") | {"policies_dir": str(SHIPPED)}
    raw["teams"]["team-a"]["policies"] = ["default-caps", "safety-llama-guard"]
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(raw))

    assert main(["check-config", str(path)]) == 2
    assert "policies.safety-llama-guard.safety.model: unknown model" in capsys.readouterr().err

    raw["models"]["meta-llama/Llama-Guard-4-12B"] = {"upstreams": [{"upstream": "fake"}]}
    path.write_text(yaml.safe_dump(raw))
    assert main(["check-config", str(path)]) == 0


def test_policy_schema_refuses_unknown_fields() -> None:
    with pytest.raises(ValueError, match="Extra inputs"):
        Policy.model_validate({"caps": {"max_token": {"limit": 3}}})
