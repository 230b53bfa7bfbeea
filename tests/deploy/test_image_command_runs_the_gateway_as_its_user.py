"""The image's command, outside a container: ENTRYPOINT + CMD from deploy/Dockerfile with
its ENV, the wheel's virtualenv where the image has /opt/venv, the configuration laid out as
compose and Kubernetes mount it (<dir>/config/config.yaml, <dir>/policies/), and, when the
suite runs as root, the image's USER (10001), as the container would. The gateway itself is
the process (exec), listens on GATEWAY_PORT, the HEALTHCHECK command fails before it is up
and passes once it is, `llm-gateway reload` run beside it as the same user (as `docker
compose exec` and `kubectl exec` run it) finds its pid file in the container's /tmp and puts
an edited configuration in force, and the STOPSIGNAL ends it with exit code 0 (drained)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import DEMO_UPSTREAM_KEY_ENV
from tests.conftest import free_port
from tests.deploy.dockerfile import ROOT, copied_file, final_stage, image_command
from tests.deploy.installed import runs_for_everyone

STAGE = final_stage()
# The session's wheel may be built by the first test that needs it.
pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def world_readable_dir() -> Iterator[Path]:
    """A directory the image's user can read (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="llm-gateway-image-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def image_user(installed: Path) -> tuple[int, int] | None:
    """USER uid:gid, when this suite can switch to it (it runs as root) and that user can
    run the venv's interpreter."""
    user = STAGE.last("USER")
    assert user is not None
    uid, _, gid = user.args.partition(":")
    if os.geteuid() != 0 or not runs_for_everyone(installed / "python"):
        return None
    return int(uid), int(gid or uid)


def readyz(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as ready:
        assert ready.status == 200
        answer: dict[str, Any] = json.load(ready)
        return answer


def status_uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError("no Uid line")


def test_the_image_command_serves_as_the_image_user(
    installed: Path, world_readable_dir: Path
) -> None:
    # The configuration as compose and Kubernetes mount it: config/ and policies/ side by
    # side, the demo config's `policies_dir: ../policies` unchanged.
    etc = world_readable_dir / "etc"
    shutil.copytree(ROOT / "policies", etc / "policies")
    (etc / "config").mkdir()
    shutil.copy(ROOT / "examples" / "demo.yaml", etc / "config" / "config.yaml")
    command = image_command(STAGE)
    bin_dir = world_readable_dir / "bin"
    bin_dir.mkdir()
    (bin_dir / command[0]).symlink_to(copied_file(STAGE, command[0]))
    port = free_port()
    env = STAGE.env()
    env["PATH"] = (
        env["PATH"]
        .replace("/opt/venv/bin", f"{bin_dir}:{installed}")
        .replace("$PATH", "/usr/local/bin:/usr/bin:/bin")
    )
    # The container's own /tmp (a tmpfs in compose, an emptyDir in Kubernetes), where the
    # pid file for `reload` goes; not this machine's /tmp, which other runs share.
    (world_readable_dir / "tmp").mkdir(mode=0o1777)
    (world_readable_dir / "tmp").chmod(0o1777)
    env |= {
        "TMPDIR": str(world_readable_dir / "tmp"),
        "GATEWAY_CONFIG": str(etc / "config" / "config.yaml"),
        "GATEWAY_PORT": str(port),
        DEMO_UPSTREAM_KEY_ENV: "demo-upstream-key",
    }
    user = image_user(installed)
    uid, gid = user if user else (None, None)
    groups: list[int] | None = [] if user else None
    check = STAGE.last("HEALTHCHECK")
    assert check is not None
    healthcheck = check.exec_form()
    assert healthcheck is not None

    def healthy() -> bool:
        answer = subprocess.run(
            healthcheck, env=env, timeout=10, user=uid, group=gid, extra_groups=groups
        )
        return answer.returncode == 0

    assert not healthy(), "the HEALTHCHECK passes with nothing listening"
    log = world_readable_dir / "output.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command,
            env=env,
            cwd=world_readable_dir,
            stdout=sink,
            stderr=sink,
            user=uid,
            group=gid,
            extra_groups=groups,
        )
    try:
        deadline = time.monotonic() + 30
        while not healthy():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"never healthy:\n{log.read_text()}"
            time.sleep(0.2)

        cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes().split(b"\0")
        assert any(part.endswith(b"llm-gateway") for part in cmdline), cmdline
        assert b"serve" in cmdline
        if user:
            assert status_uid(process.pid) == user[0]
        assert readyz(port)["config_generation"] == 1

        config = etc / "config" / "config.yaml"
        config.write_text(
            config.read_text().replace("requests_per_minute: 600", "requests_per_minute: 60")
        )
        reload = subprocess.run(
            [installed / "llm-gateway", "reload"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            user=uid,
            group=gid,
            extra_groups=groups,
        )
        assert reload.returncode == 0, reload.stderr
        deadline = time.monotonic() + 20
        while readyz(port)["config_generation"] != 2:
            assert time.monotonic() < deadline, (
                f"the reload was not put in force:\n{log.read_text()}"
            )
            time.sleep(0.1)

        stop = STAGE.last("STOPSIGNAL")
        assert stop is not None
        process.send_signal(signal.Signals[stop.args])
        assert process.wait(timeout=30) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
