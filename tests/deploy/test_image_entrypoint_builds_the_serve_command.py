"""deploy/docker-entrypoint.sh turns the image's environment into `llm-gateway serve
--config $GATEWAY_CONFIG --host $GATEWAY_HOST --port $GATEWAY_PORT`, adds `--workers N` only
when GATEWAY_WORKERS is set, appends options given after `serve`, passes any other command
through, refuses a missing variable, and execs (the gateway keeps the shell's PID: PID 1 in
a container). `llm-gateway` is a stub here that prints its PID and its arguments."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.deploy.dockerfile import copied_file, final_stage, image_command

STAGE = final_stage()
IMAGE_ENV = STAGE.env()
COMMAND = image_command(STAGE)
ENTRYPOINT = copied_file(STAGE, COMMAND[0])


@pytest.fixture
def stub_bin(tmp_path: Path) -> Path:
    stub = tmp_path / "llm-gateway"
    stub.write_text('#!/bin/sh\necho "$$"\nprintf "%s\\n" "$@"\n')
    stub.chmod(0o755)
    return tmp_path


def entrypoint(stub_bin: Path, *args: str, **env: str) -> tuple[int, list[str], str]:
    """Runs the entrypoint with the image's ENV (plus `env`); returns the exit code, the
    stub's arguments (after checking it ran with the entrypoint's PID) and stderr."""
    environment = IMAGE_ENV | {"PATH": f"{stub_bin}:{os.environ['PATH']}"} | env
    process = subprocess.Popen(
        [str(ENTRYPOINT), *args],
        env={k: v for k, v in environment.items() if v is not None},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = process.communicate(timeout=10)
    lines = out.splitlines()
    if process.returncode == 0:
        assert lines[0] == str(process.pid), "the entrypoint did not exec llm-gateway"
    return process.returncode, lines[1:], err


def serve(config: str | None = None, port: str | None = None) -> list[str]:
    return [
        "serve",
        "--config",
        config or IMAGE_ENV["GATEWAY_CONFIG"],
        "--host",
        "0.0.0.0",
        "--port",
        port or IMAGE_ENV["GATEWAY_PORT"],
    ]


def test_the_image_command_serves_from_the_environment(stub_bin: Path) -> None:
    assert COMMAND[1:] == ["serve"]
    assert entrypoint(stub_bin, *COMMAND[1:])[:2] == (0, serve())
    assert entrypoint(stub_bin)[:2] == (0, serve())


def test_the_environment_overrides_the_image_defaults(stub_bin: Path) -> None:
    code, args, _ = entrypoint(stub_bin, GATEWAY_CONFIG="/srv/gw.yaml", GATEWAY_PORT="9000")
    assert (code, args) == (0, serve(config="/srv/gw.yaml", port="9000"))


def test_workers_only_when_set(stub_bin: Path) -> None:
    assert entrypoint(stub_bin, GATEWAY_WORKERS="4")[:2] == (0, [*serve(), "--workers", "4"])
    assert entrypoint(stub_bin, GATEWAY_WORKERS="")[:2] == (0, serve())


def test_options_after_serve_come_last(stub_bin: Path) -> None:
    code, args, _ = entrypoint(stub_bin, "serve", "--port", "9001", GATEWAY_WORKERS="2")
    assert (code, args) == (0, [*serve(), "--workers", "2", "--port", "9001"])


def test_other_commands_pass_through(stub_bin: Path) -> None:
    assert entrypoint(stub_bin, "check-config", "/x.yaml")[:2] == (0, ["check-config", "/x.yaml"])
    code, args, _ = entrypoint(stub_bin, "fake-upstream", "--host=0.0.0.0", "--port=9100")
    assert (code, args) == (0, ["fake-upstream", "--host=0.0.0.0", "--port=9100"])


def test_a_missing_variable_is_refused_by_name(stub_bin: Path) -> None:
    code, args, err = entrypoint(stub_bin, GATEWAY_CONFIG="")
    assert code != 0
    assert args == []
    assert "GATEWAY_CONFIG" in err
