"""deploy/Dockerfile is the image deploy/README.md promises, by rules hadolint does not
have: two stages (a wheel built in one, only its virtualenv copied into the other), every
base pinned by digest or exact version, nothing installed or compiled in the final stage
(the base's setuptools and wheel removed), a numeric non-root USER, a HEALTHCHECK on
/healthz without curl, STOPSIGNAL SIGTERM, exec-form ENTRYPOINT and CMD, and defaults for
the GATEWAY_* variables the entrypoint reads. Each rule is shown to catch a broken copy."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from tests.deploy.dockerfile import DOCKERFILE, image_problems

TEXT = DOCKERFILE.read_text()


def test_the_dockerfile_keeps_every_rule() -> None:
    assert image_problems(TEXT) == []


def replace(old: str, new: str) -> Callable[[str], str]:
    def change(text: str) -> str:
        assert old in text, old
        return text.replace(old, new)

    return change


def regex(pattern: str, new: str, across_lines: bool = False) -> Callable[[str], str]:
    flags = re.MULTILINE | (re.DOTALL if across_lines else 0)

    def change(text: str) -> str:
        changed, count = re.subn(pattern, new, text, flags=flags)
        assert count, pattern
        return changed

    return change


BROKEN: dict[str, tuple[Callable[[str], str], str]] = {
    "one stage": (
        regex(r"^FROM \$\{PYTHON_IMAGE\} AS build$.*?(?=^FROM )", "", across_lines=True),
        "multi-stage: one stage only",
    ),
    "base by moving tag": (
        regex(r"^ARG PYTHON_IMAGE=.*$", "ARG PYTHON_IMAGE=python:3.11-slim"),
        "pinned base: 'python:3.11-slim'",
    ),
    "base latest": (
        regex(r"^ARG PYTHON_IMAGE=.*$", "ARG PYTHON_IMAGE=python:latest"),
        "pinned base",
    ),
    "no wheel": (replace("pip wheel --no-deps", "pip install --no-deps"), "no build stage runs"),
    "compiler in final stage": (
        replace(
            "RUN python -m pip uninstall",
            "RUN apt-get update && apt-get install -y --no-install-recommends gcc=4:12.2.0-3 "
            "&& python -m pip uninstall",
        ),
        "no build tools: the final stage installs or builds",
    ),
    "pip install in final stage": (
        replace("COPY --from=build /opt/venv /opt/venv", "RUN pip install --no-cache-dir x==1"),
        "no build tools: the final stage installs or builds",
    ),
    "setuptools kept": (replace("setuptools wheel pip", "pip"), "setuptools and wheel are left"),
    "root user": (
        replace("USER 10001:10001", "USER root"),
        "non-root user: the image runs as 'root'",
    ),
    "uid 0": (replace("USER 10001:10001", "USER 0"), "non-root user"),
    "no user": (replace("USER 10001:10001\n", ""), "non-root user"),
    "named user": (replace("USER 10001:10001", "USER gateway"), "non-root user"),
    "no healthcheck": (regex(r"^HEALTHCHECK .*?\]\n", "", across_lines=True), "HEALTHCHECK: none"),
    "healthcheck with curl": (
        regex(
            r'CMD \["python", "-c", .*\]$', 'CMD ["curl", "-f", "http://127.0.0.1:8080/healthz"]'
        ),
        "HEALTHCHECK: uses curl",
    ),
    "healthcheck elsewhere": (replace("/healthz'", "/metrics'"), "HEALTHCHECK: none"),
    "stop signal kill": (replace("STOPSIGNAL SIGTERM", "STOPSIGNAL SIGKILL"), "STOPSIGNAL"),
    "no stop signal": (replace("STOPSIGNAL SIGTERM\n", ""), "STOPSIGNAL"),
    "shell-form entrypoint": (
        replace('ENTRYPOINT ["docker-entrypoint.sh"]', "ENTRYPOINT docker-entrypoint.sh"),
        "ENTRYPOINT: not in exec form",
    ),
    "no config default": (
        replace("GATEWAY_CONFIG=/etc/llm-gateway/config/config.yaml \\\n", ""),
        "ENV: no default for GATEWAY_CONFIG",
    ),
    "loopback host": (
        replace("GATEWAY_HOST=0.0.0.0", "GATEWAY_HOST=127.0.0.1"),
        "GATEWAY_HOST is not 0.0.0.0",
    ),
}


@pytest.mark.parametrize("name", BROKEN)
def test_a_broken_copy_is_caught(name: str) -> None:
    change, expected = BROKEN[name]
    broken = change(TEXT)
    assert broken != TEXT

    problems = image_problems(broken)

    assert any(expected in problem for problem in problems), problems
