"""deploy/haproxy.cfg passes `haproxy -c` (Debian's haproxy, which scripts/test.sh
installs), with no warning but the two it must give here: the replicas' names resolve only
on the compose network, and `init-addr last,libc,none` lets HAProxy start without them. A
broken copy (a misspelled keyword, a server without an address) is refused."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy.dockerfile import ROOT

HAPROXY_CFG = ROOT / "deploy" / "haproxy.cfg"


def check(path: Path) -> subprocess.CompletedProcess[str]:
    haproxy = shutil.which("haproxy", path="/usr/sbin:/usr/bin:/usr/local/sbin")
    assert haproxy, "haproxy is not installed (scripts/test.sh installs Debian's)"
    return subprocess.run(
        [haproxy, "-c", "-f", str(path)], capture_output=True, text=True, timeout=30
    )


def test_the_balancer_config_is_valid() -> None:
    result = check(HAPROXY_CFG)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Configuration file is valid" in output
    warnings = [line for line in output.splitlines() if "[WARNING]" in line]
    assert len(warnings) == 2, output
    for line in warnings:
        assert re.search(r"could not resolve address 'gateway-\d'", line), line


@pytest.mark.parametrize(
    ("old", "new"),
    [("    balance leastconn", "    balanse leastconn"), (" gateway-2:8080\n", "\n")],
    ids=["misspelled-keyword", "server-without-address"],
)
def test_a_broken_copy_is_refused(old: str, new: str, tmp_path: Path) -> None:
    text = HAPROXY_CFG.read_text()
    assert old in text
    broken = tmp_path / "haproxy.cfg"
    broken.write_text(text.replace(old, new, 1))

    result = check(broken)

    assert result.returncode != 0, result.stdout + result.stderr
