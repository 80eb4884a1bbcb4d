"""Deploys that cannot succeed answer clearly and leave nothing behind."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

from tests.conftest import RegistryInfo
from tests.support import Gateway, processes_mentioning, running_gateway


def test_no_free_port_is_503(registry: RegistryInfo, tmp_path: Path) -> None:
    # A one-port range whose only port another process holds.
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    gw = Gateway(tmp_path / "data", registry.tracking_uri, port_range=(port, port))
    try:
        with running_gateway(gw):
            assert gw.get("/get_number_free_ports").json() == 0
            reply = gw.post("/deploy/wine-quality/1")
            assert reply.status == 503, reply.body
            assert reply.json()["error"] == "no_free_port"
            assert "retry-after" in reply.headers
            assert gw.get("/get_deployed_models").json() == {}
    finally:
        holder.close()


def test_readiness_timeout_is_502_and_cleans_up(registry: RegistryInfo, tmp_path: Path) -> None:
    gw = Gateway(
        tmp_path / "data", registry.tracking_uri, extra_env={"GATEWAY_DEPLOY_TIMEOUT": "0.5"}
    )
    with running_gateway(gw):
        free = gw.get("/get_number_free_ports").json()
        reply = gw.post("/deploy/wine-quality/1")
        assert reply.status == 502, reply.body
        body = reply.json()
        assert body["error"] == "deploy_failed"
        # The whole start is bounded: fetching the artifacts, spawning, and /ping.
        assert "not ready after 0.5s" in body["detail"] or "start within 0.5s" in body["detail"]
        assert gw.get("/get_deployed_models").json() == {}
        assert gw.get("/get_number_free_ports").json() == free
        start, end = gw.port_range
        for port in range(start, end + 1):
            # The lean launcher passes `--port N`, `mlflow models serve` passes `-p N`.
            assert not processes_mentioning(f"--port {port} "), port
            assert not processes_mentioning(f"-p {port} "), port


def test_backend_that_exits_is_502_with_its_output(registry: RegistryInfo, tmp_path: Path) -> None:
    # No conda on the test machines: `mlflow models serve --env-manager conda` exits at once.
    if shutil.which("conda"):
        pytest.skip("conda is installed here, so this backend would not fail")
    gw = Gateway(tmp_path / "data", registry.tracking_uri)
    with running_gateway(gw):
        reply = gw.post("/deploy/wine-quality/1?env_manager=conda")
        assert reply.status == 502, reply.body
        body = reply.json()
        assert body["error"] == "deploy_failed"
        assert "exited with code" in body["detail"]
        assert "last output" in body["detail"]
        assert gw.get("/get_deployed_models").json() == {}
