"""Configuration loading: a valid file becomes one frozen config tree, the upstream key comes
from the environment variable the file names and never shows, and every problem names the
exact path of the field that holds it."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import ConfigError, GatewayConfig, load_config, parse_config
from gateway.stages.auth import hash_key
from tests.conftest import (
    MODEL,
    OPENAI_MODEL,
    TEAM_KEY,
    UPSTREAM_KEY,
    UPSTREAM_KEY_ENV,
    config_dict,
    make_config,
)

ENVIRON = {UPSTREAM_KEY_ENV: UPSTREAM_KEY}


def raw_config() -> dict[str, Any]:
    return copy.deepcopy(config_dict("http://127.0.0.1:9"))


def problems_of(raw: Any, environ: dict[str, str] = ENVIRON) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, environ=environ)
    return caught.value.problems


def write(tmp_path: Path, raw: Any) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


# --- a valid configuration ------------------------------------------------------------


def test_valid_config_loads_into_the_config_tree() -> None:
    config = make_config(raw_config())

    assert isinstance(config, GatewayConfig)
    assert set(config.upstreams) == {"fake", "fake-openai"}
    assert config.models[MODEL].aliases == ["llama-8b"]
    assert [key.hash for key in config.teams["team-a"].key_hashes] == [hash_key(TEAM_KEY)]


def test_valid_yaml_file_loads_with_the_given_environment(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, raw_config()), ENVIRON)

    assert config == make_config(raw_config())


def test_loaded_config_is_frozen() -> None:
    config = make_config(raw_config())

    with pytest.raises(ValueError, match="frozen"):
        setattr(config.server, "port", 1)  # noqa: B010 (the assignment mypy would refuse)


# --- the upstream key -----------------------------------------------------------------


def test_upstream_key_is_read_from_the_environment_variable_the_file_names() -> None:
    secret = make_config(raw_config()).upstreams["fake"].api_key_env

    assert secret is not None
    assert secret.variable == UPSTREAM_KEY_ENV
    assert secret.value == UPSTREAM_KEY


def test_upstream_key_never_appears_in_repr_or_str_of_the_config() -> None:
    config = make_config(raw_config())

    assert UPSTREAM_KEY not in repr(config)
    assert UPSTREAM_KEY not in str(config)
    assert UPSTREAM_KEY_ENV in repr(config)


def test_upstream_key_never_appears_in_model_dump() -> None:
    config = make_config(raw_config())

    assert UPSTREAM_KEY not in repr(config.model_dump())
    assert UPSTREAM_KEY not in repr(config.model_dump(mode="json"))
    assert UPSTREAM_KEY not in config.model_dump_json()


def test_upstream_without_api_key_env_has_no_key() -> None:
    raw = raw_config()
    del raw["upstreams"]["fake"]["api_key_env"]

    assert make_config(raw).upstreams["fake"].api_key_env is None


# --- schema errors name the field path ------------------------------------------------


def test_unknown_field_is_refused_with_its_path() -> None:
    raw = raw_config()
    raw["server"]["prot"] = 8080

    assert problems_of(raw) == ["server.prot: Extra inputs are not permitted"]


def test_the_old_audit_path_setting_names_where_it_moved() -> None:
    raw = raw_config()
    raw["server"]["audit_path"] = "/var/log/llm-gateway/audit.jsonl"

    assert problems_of(raw) == ["server: audit_path has moved to audit.path (the `audit:` section)"]


def test_the_audit_section_defaults_to_the_log_stream_and_continue() -> None:
    config = make_config(raw_config())

    assert (config.audit.path, config.audit.on_failure) == (None, "continue")
    raw = raw_config()
    raw["audit"] = {"on_failure": "stop"}
    [problem] = problems_of(raw)
    assert problem.startswith("audit.on_failure: Input should be 'continue' or 'refuse'")


def test_missing_environment_variable_names_the_field_and_the_variable() -> None:
    raw = raw_config()
    del raw["upstreams"]["fake-openai"]["api_key_env"]

    assert problems_of(raw, environ={}) == [
        f"upstreams.fake.api_key_env: environment variable {UPSTREAM_KEY_ENV} is not set or empty"
    ]


def test_empty_environment_variable_counts_as_missing() -> None:
    problems = problems_of(raw_config(), environ={UPSTREAM_KEY_ENV: ""})

    assert problems == [
        f"upstreams.fake.api_key_env: environment variable {UPSTREAM_KEY_ENV} is not set or empty",
        f"upstreams.fake-openai.api_key_env: environment variable {UPSTREAM_KEY_ENV} "
        "is not set or empty",
    ]


def test_bad_key_hash_is_refused_with_its_path() -> None:
    raw = raw_config()
    raw["teams"]["team-a"]["key_hashes"] = [TEAM_KEY]

    [problem] = problems_of(raw)

    assert problem.startswith("teams.team-a.key_hashes[0]: ")
    assert TEAM_KEY not in problem


def test_every_schema_problem_is_reported_at_once() -> None:
    raw = raw_config()
    raw["server"]["prot"] = 8080
    raw["teams"]["team-b"]["key_hashes"] = ["ABC"]

    paths = [problem.split(": ", 1)[0] for problem in problems_of(raw)]

    assert paths == ["server.prot", "teams.team-b.key_hashes[0]"]


def test_a_model_price_is_optional_and_read_per_million_tokens() -> None:
    raw = raw_config()
    raw["models"][MODEL]["price"] = {"input_per_million": 0.15, "output_per_million": 0}

    config = make_config(raw)

    price = config.models[MODEL].price
    assert price is not None
    assert (price.input_per_million, price.output_per_million) == (0.15, 0.0)
    assert config.models[OPENAI_MODEL].price is None


@pytest.mark.parametrize(
    "price",
    [
        {"input_per_million": -0.01, "output_per_million": 1},
        {"input_per_million": float("inf"), "output_per_million": 1},
        {"input_per_million": 1},
    ],
)
def test_a_negative_infinite_or_half_given_price_is_refused_with_its_path(
    price: dict[str, float],
) -> None:
    raw = raw_config()
    raw["models"][MODEL]["price"] = price

    [problem] = problems_of(raw)

    field = "output" if len(price) == 1 else "input"
    assert problem.startswith(f"models.{MODEL}.price.{field}_per_million: ")


# --- cross-reference errors name the field path ---------------------------------------


def test_model_referencing_an_unknown_upstream_is_refused_with_its_path() -> None:
    raw = raw_config()
    raw["models"][OPENAI_MODEL]["upstreams"] = [{"upstream": "nowhere"}]

    assert problems_of(raw) == [
        f"models.{OPENAI_MODEL}.upstreams[0].upstream: unknown upstream 'nowhere' "
        "(known: fake, fake-openai)"
    ]


def test_team_referencing_an_unknown_model_is_refused_with_its_path() -> None:
    raw = raw_config()
    raw["teams"]["team-a"]["models"] = [MODEL, "no-such-model"]

    assert problems_of(raw) == ["teams.team-a.models[1]: unknown model 'no-such-model'"]


def test_team_may_name_a_model_by_its_alias() -> None:
    raw = raw_config()
    raw["teams"]["team-a"]["models"] = ["llama-8b"]

    assert make_config(raw).teams["team-a"].models == ["llama-8b"]


def test_alias_colliding_with_another_models_name_is_refused_at_the_alias() -> None:
    raw = raw_config()
    raw["models"]["copycat"] = {"aliases": [OPENAI_MODEL], "upstreams": [{"upstream": "fake"}]}

    assert problems_of(raw) == [
        f"models.copycat.aliases[0]: '{OPENAI_MODEL}' is already used by models.{OPENAI_MODEL}"
    ]


def test_alias_colliding_with_a_later_models_name_still_names_the_alias() -> None:
    raw = raw_config()
    copycat = {"aliases": [OPENAI_MODEL], "upstreams": [{"upstream": "fake"}]}
    raw["models"] = {"copycat": copycat, **raw["models"]}

    [problem] = problems_of(raw)

    assert "models.copycat.aliases[0]" in problem


def test_same_key_hash_in_two_teams_is_refused() -> None:
    raw = raw_config()
    raw["teams"]["team-b"]["key_hashes"] = [hash_key(TEAM_KEY)]

    assert problems_of(raw) == [
        "teams.team-b.key_hashes[0]: the same key is already given to teams.team-a.key_hashes[0]"
    ]


# --- the file itself ------------------------------------------------------------------


def test_invalid_yaml_names_the_file_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("server:\n  port: 8080\n  host: [unclosed\n", encoding="utf-8")

    with pytest.raises(ConfigError) as caught:
        load_config(path, ENVIRON)

    [problem] = caught.value.problems
    assert problem.startswith(f"{path}: not valid YAML at line ")
    assert "column" in problem


def test_missing_file_is_reported_as_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"

    with pytest.raises(ConfigError) as caught:
        load_config(path, ENVIRON)

    assert caught.value.problems == [f"{path}: cannot read: No such file or directory"]


def test_directory_is_reported_as_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path, ENVIRON)

    [problem] = caught.value.problems
    assert problem.startswith(f"{tmp_path}: cannot read: ")


def test_empty_file_is_refused_at_the_top_level(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("", encoding="utf-8")

    with pytest.raises(ConfigError) as caught:
        load_config(path, ENVIRON)

    [problem] = caught.value.problems
    assert problem.startswith("(top level): ")


def test_config_error_message_lists_one_problem_per_line() -> None:
    raw = raw_config()
    raw["server"]["prot"] = 8080
    raw["teams"]["team-b"]["key_hashes"] = ["ABC"]

    with pytest.raises(ConfigError) as caught:
        parse_config(raw, environ=ENVIRON)

    assert str(caught.value).splitlines() == caught.value.problems
