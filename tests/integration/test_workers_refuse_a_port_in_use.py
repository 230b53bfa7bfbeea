"""`serve --workers 2` on a port something already listens on exits 1 before starting a
worker: bound with SO_REUSEPORT, the workers would otherwise share the port with that
listener (another gateway left running, say) and silently split the traffic with it."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.conftest import config_dict
from tests.gateway_process import NO_UPSTREAM
from tests.integration.workers import serve_workers_once


def test_a_port_already_listened_on_is_refused(tmp_path: Path) -> None:
    with socket.socket() as taken:
        # As a worker would bind it: the probe must see it anyway.
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        raw = config_dict(NO_UPSTREAM)
        raw["server"]["port"] = port
        raw["rate_limits"] = {"redis_url": "redis://127.0.0.1:9/0"}  # never reached
        done = serve_workers_once(tmp_path, raw)

    assert done.returncode == 1
    assert '"event":"workers_not_started"' in done.stdout
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in done.stdout
    assert '"worker_started"' not in done.stdout
