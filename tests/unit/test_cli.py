"""The `llm-gateway` command line, run in-process: check-config says ok or lists every
problem with its field path, serve refuses an invalid file before starting, and hash-key
makes a key whose hash the configuration accepts."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway import server
from gateway.cli import DEMO_CONFIG, DEMO_TEAM_KEY, DEMO_UPSTREAM_KEY_ENV, main
from gateway.config import TeamConfig, load_config
from gateway.stages.auth import hash_key
from tests.conftest import UPSTREAM_KEY, UPSTREAM_KEY_ENV, config_dict


def write(tmp_path: Path, raw: Any, name: str = "gateway.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


@pytest.fixture
def valid_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(UPSTREAM_KEY_ENV, UPSTREAM_KEY)
    return write(tmp_path, config_dict("http://127.0.0.1:9"))


@pytest.fixture
def invalid_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(UPSTREAM_KEY_ENV, UPSTREAM_KEY)
    raw = config_dict("http://127.0.0.1:9")
    raw["server"]["prot"] = 8080
    raw["teams"]["team-a"]["key_hashes"] = ["not-a-hash"]
    return write(tmp_path, raw, name="invalid.yaml")


INVALID_FILE_PROBLEMS = (
    "  server.prot: Extra inputs are not permitted\n",
    "  teams.team-a.key_hashes[0]: ",
)


# --- check-config ---------------------------------------------------------------------


def test_check_config_on_a_valid_file_prints_ok_and_returns_0(
    valid_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check-config", str(valid_file)]) == 0

    out, err = capsys.readouterr()
    assert out == f"{valid_file}: ok (2 upstreams, 3 models, 2 teams)\n"
    assert err == ""


def test_check_config_on_an_invalid_file_lists_each_problem_and_returns_2(
    invalid_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check-config", str(invalid_file)]) == 2

    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"{invalid_file}: invalid configuration\n")
    for problem in INVALID_FILE_PROBLEMS:
        assert problem in err


def test_check_config_names_the_missing_environment_variable(
    valid_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(UPSTREAM_KEY_ENV)

    assert main(["check-config", str(valid_file)]) == 2

    err = capsys.readouterr().err
    assert f"  upstreams.fake.api_key_env: environment variable {UPSTREAM_KEY_ENV}" in err


def test_check_config_on_a_missing_file_returns_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "absent.yaml"

    assert main(["check-config", str(path)]) == 2

    assert f"  {path}: cannot read: " in capsys.readouterr().err


# --- serve ----------------------------------------------------------------------------


def test_serve_with_an_invalid_file_returns_2_without_starting(
    invalid_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def must_not_start(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("serve started on an invalid configuration")

    monkeypatch.setattr(server, "serve", must_not_start)

    assert main(["serve", "--config", str(invalid_file)]) == 2

    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"{invalid_file}: invalid configuration\n")
    for problem in INVALID_FILE_PROBLEMS:
        assert problem in err


# --- hash-key -------------------------------------------------------------------------


def hash_key_output(capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    assert main(["hash-key"]) == 0
    out = capsys.readouterr().out
    key = re.search(r"^key:\s+(\S+)$", out, re.MULTILINE)
    digest = re.search(r"^hash:\s+(\S+)$", out, re.MULTILINE)
    assert key is not None
    assert digest is not None
    return key.group(1), digest.group(1)


def test_hash_key_prints_a_key_and_its_sha256(capsys: pytest.CaptureFixture[str]) -> None:
    key, digest = hash_key_output(capsys)

    assert digest == hashlib.sha256(key.encode()).hexdigest()
    assert digest == hash_key(key)


def test_hash_key_hash_is_accepted_by_the_team_config(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, digest = hash_key_output(capsys)

    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert [k.hash for k in TeamConfig(key_hashes=[digest], models=["*"]).key_hashes] == [digest]


def test_hash_key_makes_a_new_key_each_time(capsys: pytest.CaptureFixture[str]) -> None:
    first, _ = hash_key_output(capsys)
    second, _ = hash_key_output(capsys)

    assert first != second


# --- the demo configuration -----------------------------------------------------------


def test_demo_config_passes_check_config(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(DEMO_UPSTREAM_KEY_ENV, "demo-upstream-key")

    assert main(["check-config", str(DEMO_CONFIG)]) == 0

    assert capsys.readouterr().out.startswith(f"{DEMO_CONFIG}: ok ")


def test_demo_config_holds_the_hash_of_the_demo_team_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(DEMO_UPSTREAM_KEY_ENV, "demo-upstream-key")

    config = load_config(DEMO_CONFIG)

    assert [key.hash for key in config.teams["demo"].key_hashes] == [hash_key(DEMO_TEAM_KEY)]
