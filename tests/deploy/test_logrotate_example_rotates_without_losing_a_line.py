"""deploy/logrotate/llm-gateway, run by a real logrotate (Debian's; the test command
installs it) against a gateway process under traffic: the audit file is renamed, the
postrotate's SIGUSR1 reaches the process through its pid file, and every request's audit
line is in exactly one of the two files, the later ones in the new file. The README shows
the same file."""

from __future__ import annotations

import asyncio
import grp
import os
import pwd
import shutil
from collections import Counter
from pathlib import Path

from tests.conftest import RunningUpstream, config_dict
from tests.gateway_process import start_gateway_process
from tests.integration.audit_trail import request_ids, traffic
from tests.integration.workers import until

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "deploy" / "logrotate" / "llm-gateway"


def example_for(audit: Path, pid_file: Path) -> str:
    """The shipped file with this test's paths, and this user as the new file's owner."""
    user, group = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
    text = EXAMPLE.read_text()
    for shipped, here in (
        ("/var/log/llm-gateway/audit.jsonl", str(audit)),
        ("/run/llm-gateway/llm-gateway.pid", str(pid_file)),
        ("create 0640 llm-gateway llm-gateway", f"create 0640 {user} {group}"),
    ):
        assert shipped in text
        text = text.replace(shipped, here)
    return text


async def test_the_shipped_logrotate_config_rotates_a_serving_gateway(
    upstream: RunningUpstream, tmp_path: Path
) -> None:
    logrotate = shutil.which("logrotate") or "/usr/sbin/logrotate"
    assert Path(logrotate).exists(), "logrotate is missing: scripts/test.sh installs it"
    audit = tmp_path / "audit.jsonl"
    raw = config_dict(upstream.url)
    raw["audit"] = {"path": str(audit)}
    gateway = start_gateway_process(tmp_path, raw=raw)
    config = tmp_path / "logrotate.conf"
    config.write_text(example_for(audit, gateway.pid_file))
    try:
        before = list(await traffic(gateway, "before", 30))
        during = asyncio.create_task(traffic(gateway, "during", 60))
        rotated = await asyncio.create_subprocess_exec(
            logrotate, "--force", "--state", str(tmp_path / "logrotate.state"), str(config)
        )
        assert await rotated.wait() == 0
        sent_during = list(await during)
        await until(lambda: len(gateway.records("audit_reopened")) == 1)
        after = list(await traffic(gateway, "after", 30))
    finally:
        assert gateway.stop() == 0

    [renamed] = tmp_path.glob("audit.jsonl-*")  # dateext; delaycompress: not compressed yet
    old, new = request_ids(renamed), request_ids(audit)
    assert Counter(old + new) == Counter(before + sent_during + after)
    assert set(before) <= set(old)
    assert set(after) <= set(new)
    assert oct(audit.stat().st_mode & 0o777) == oct(0o640)


def test_the_readme_shows_the_shipped_file() -> None:
    readme = (ROOT / "README.md").read_text()
    shipped = [line for line in EXAMPLE.read_text().splitlines() if not line.startswith("#")]
    assert "\n".join(shipped) + "\n```" in readme
