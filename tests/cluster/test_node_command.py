"""The command a Ray node builds for a backend (launchers.NodeCommand), run on this host.

No Ray here: the same object the placement pickles to a node is called as the
actor would call it, and its command is started as the actor would start it.
Runs in every suite.
"""

from __future__ import annotations

import asyncio
import pickle
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from gateway.deploy.launchers import NodeCommand, node_command
from gateway.settings import Settings
from supervisor.state_store import DeploymentRecord
from tests.support import unused_port, wait_until

RECORD = DeploymentRecord("wine-quality-1", "wine-quality", "1")


def test_it_travels_without_the_gateways_secrets_or_environment() -> None:
    settings = Settings(  # type: ignore[call-arg]
        GATEWAY_ADMIN_TOKEN="s3cret", MLFLOW_TRACKING_URI="http://10.0.0.5:5000"
    )
    command = node_command(settings)
    sent = pickle.dumps(command)
    assert b"s3cret" not in sent and b"PATH" not in sent
    assert pickle.loads(sent) == command == NodeCommand("http://10.0.0.5:5000", 1, "lean")


def test_the_lean_backend_fetches_its_model_then_serves_it(registry: Any, tmp_path: Path) -> None:
    port = unused_port()
    build = NodeCommand(registry.tracking_uri, workers=1)
    command = asyncio.run(build(RECORD, port, "127.0.0.1"))
    assert command.argv[:3] == [sys.executable, "-m", "gateway.deploy.launchers"]
    assert command.env["MLFLOW_TRACKING_URI"] == registry.tracking_uri
    log = tmp_path / "backend.log"
    with log.open("wb") as out:
        backend = subprocess.Popen(command.argv, env=command.env, stdout=out,
                                   stderr=subprocess.STDOUT)  # fmt: skip
    try:

        def answers() -> bool:
            assert backend.poll() is None, log.read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        wait_until(answers, 120, 0.2, "the node's backend to answer /ping")
        # The download step became the server (one process, exec'd in place).
        cmdline = Path(f"/proc/{backend.pid}/cmdline").read_bytes().split(b"\0")
        assert b"uvicorn" in cmdline and str(port).encode() in cmdline
        assert "fetching models:/wine-quality/1" in log.read_text()
    finally:
        backend.kill()
        backend.wait()


async def test_other_launchers_build_their_command_on_the_node() -> None:
    serve = await NodeCommand("http://r:5000", 2, "mlflow")(RECORD, 9000, "10.0.0.7")
    assert serve.argv[:5] == [sys.executable, "-m", "mlflow", "models", "serve"]
    assert ["-h", "10.0.0.7", "-p", "9000", "-w", "2"] == serve.argv[7:13]
    custom = NodeCommand(
        "http://r:5000", 1, "lean", ("srv", "--at", "{host}:{port}", "{model_uri}")
    )
    built = await custom(RECORD, 9000, "10.0.0.7")
    assert built.argv == ["srv", "--at", "10.0.0.7:9000", "models:/wine-quality/1"]
