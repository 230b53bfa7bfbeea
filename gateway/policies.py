"""Policies: the company's rules for a team, as YAML files (shipped in `policies/`) or
inline in the configuration, and how several of them compose.

A policy can force HIPAA compliance, force a safety model (and say whether a client may
choose another), cap `max_tokens` and `n` (clamp or reject), forbid parameters, restrict
models and give defaults to absent parameters. A team lists the policies that apply to it;
they compose in that order, and two policies that set the same rule to different values
are a configuration error naming both, never a silent override.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gateway.contract import ChatCompletionRequest
from gateway.dialects.base import CONTRACT_PARAMETERS
from gateway.errors import field_path

_FROZEN = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

# Defaults a policy may give to absent parameters (sampling knobs, not content).
DEFAULTABLE = frozenset(
    {
        "max_tokens",
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "repetition_penalty",
        "presence_penalty",
        "frequency_penalty",
        "n",
        "reasoning_effort",
        "context_length_exceeded_behavior",
    }
)


class Cap(BaseModel):
    model_config = _FROZEN

    limit: Annotated[int, Field(ge=1)]
    # clamp: lower the value to the limit (the response says so); reject: 400.
    action: Literal["clamp", "reject"] = "reject"


class CapsPolicy(BaseModel):
    model_config = _FROZEN

    max_tokens: Cap | None = None
    n: Cap | None = None
    # Contract parameters this team may not send (400 naming the parameter).
    forbidden_params: list[str] = []
    # Public model names the team may use under this policy; absent: no restriction.
    allowed_models: list[str] | None = None
    # Values for parameters the client did not send.
    defaults: dict[str, Any] = {}

    @field_validator("forbidden_params")
    @classmethod
    def _known_params(cls, names: list[str]) -> list[str]:
        unknown = [name for name in names if name not in CONTRACT_PARAMETERS]
        if unknown:
            raise ValueError(f"not contract parameters: {', '.join(unknown)}")
        return names

    @field_validator("defaults")
    @classmethod
    def _defaultable(cls, defaults: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(defaults) - DEFAULTABLE)
        if unknown:
            raise ValueError(
                f"cannot default {', '.join(unknown)} (allowed: {', '.join(sorted(DEFAULTABLE))})"
            )
        probe = {"model": "m", "messages": [{"role": "user", "content": "x"}], **defaults}
        try:
            ChatCompletionRequest.model_validate(probe)
        except ValidationError as exc:
            first = exc.errors(include_input=False)[0]
            raise ValueError(f"{field_path(first['loc'])}: {first['msg']}") from None
        return defaults


class SafetyPolicy(BaseModel):
    model_config = _FROZEN

    # The safety classifier: a public model name from `models:` (Llama Guard's format).
    model: str
    # May a client name another safety model, or none? (false: the policy's always runs)
    client_may_choose: bool = False
    # Also classify non-streamed answers before they are returned.
    check_output: bool = False
    # When the safety model cannot answer: refuse (503) or proceed (and count it).
    on_unavailable: Literal["refuse", "proceed"] = "refuse"


class CompliancePolicy(BaseModel):
    model_config = _FROZEN

    # Every request of the team is handled under this regime, whatever the client sends.
    force: Literal["hipaa"] | None = None


class PriorityPolicy(BaseModel):
    model_config = _FROZEN

    # May the team's requests ask for the low class (`x-gateway-priority: low`, or the
    # team's default), served only when no normal request waits for the capacity?
    allow_low: bool = True


class Policy(BaseModel):
    model_config = _FROZEN

    description: str = ""
    compliance: CompliancePolicy | None = None
    safety: SafetyPolicy | None = None
    caps: CapsPolicy | None = None
    priority: PriorityPolicy | None = None


@dataclass(frozen=True, slots=True)
class TeamPolicy:
    """The composition of a team's policies: what the policy stage applies."""

    names: tuple[str, ...]
    force_hipaa: bool = False
    safety: SafetyPolicy | None = None
    max_tokens: Cap | None = None
    n: Cap | None = None
    forbidden_params: frozenset[str] = frozenset()
    allowed_models: frozenset[str] | None = None
    defaults: tuple[tuple[str, Any], ...] = ()
    allow_low_priority: bool = True


def compose(names: list[str], policies: dict[str, Policy]) -> tuple[TeamPolicy, list[str]]:
    """The team's policy and the conflicts found (each naming both policies)."""
    leaves: dict[str, tuple[str, Any]] = {}
    conflicts: list[str] = []
    forbidden: set[str] = set()

    def put(rule: str, value: Any, source: str) -> None:
        if value is None:
            return
        if rule in leaves and leaves[rule][1] != value:
            conflicts.append(f"policies '{leaves[rule][0]}' and '{source}' both set {rule}")
            return
        leaves.setdefault(rule, (source, value))

    for name in names:
        policy = policies[name]
        if policy.compliance is not None:
            put("compliance.force", policy.compliance.force, name)
        put("safety", policy.safety, name)
        if policy.caps is not None:
            caps = policy.caps
            put("caps.max_tokens", caps.max_tokens, name)
            put("caps.n", caps.n, name)
            put("caps.allowed_models", caps.allowed_models, name)
            for param, value in caps.defaults.items():
                put(f"caps.defaults.{param}", value, name)
            forbidden.update(caps.forbidden_params)
        if policy.priority is not None:
            put("priority.allow_low", policy.priority.allow_low, name)

    def chosen(rule: str) -> Any:
        return leaves[rule][1] if rule in leaves else None

    allowed = chosen("caps.allowed_models")
    return (
        TeamPolicy(
            names=tuple(names),
            force_hipaa=chosen("compliance.force") == "hipaa",
            safety=chosen("safety"),
            max_tokens=chosen("caps.max_tokens"),
            n=chosen("caps.n"),
            forbidden_params=frozenset(forbidden),
            allowed_models=frozenset(allowed) if allowed is not None else None,
            defaults=tuple(
                (rule.removeprefix("caps.defaults."), leaf[1])
                for rule, leaf in leaves.items()
                if rule.startswith("caps.defaults.")
            ),
            allow_low_priority=chosen("priority.allow_low") is not False,
        ),
        conflicts,
    )


def load_policy_files(directory: Path) -> tuple[dict[str, Policy], list[str]]:
    """Every `*.yaml` in `directory`, by file stem; problems name the file and field."""
    policies: dict[str, Policy] = {}
    problems: list[str] = []
    for path in sorted(directory.glob("*.yaml")):
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            problems.append(f"{path}: cannot read as YAML ({type(exc).__name__})")
            continue
        try:
            policies[path.stem] = Policy.model_validate(raw or {})
        except ValidationError as exc:
            for error in exc.errors(include_input=False):
                where = field_path(error["loc"]) or "(top level)"
                message = error["msg"].removeprefix("Value error, ")
                problems.append(f"{path}: {where}: {message}")
    return policies, problems
