"""The `modelgw` command: help, settings errors and a taken port answer clearly."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path


def modelgw(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                          text=True, timeout=120, env=env)  # fmt: skip


def test_help_documents_every_setting() -> None:
    result = modelgw("serve", "--help")
    assert result.returncode == 0
    for name in ("GATEWAY_PORT", "START_PORT", "END_PORT", "GATEWAY_DATA_DIR", "MLFLOW_TRACKING_URI",
                 "GATEWAY_DEPLOY_TIMEOUT", "GATEWAY_ADMIN_TOKEN", "GATEWAY_MAX_BODY_MB"):  # fmt: skip
        assert name in result.stdout, name


def test_invalid_settings_are_refused_before_start(tmp_path: Path) -> None:
    result = modelgw(
        "serve", "--start-port", "9100", "--end-port", "9000", "--data-dir", str(tmp_path)
    )
    assert result.returncode == 2
    assert "END_PORT" in result.stderr


def test_a_taken_port_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = modelgw("serve", "--port", str(port), "--data-dir", str(tmp_path / "data"),
                         "--start-port", "21001", "--end-port", "21002")  # fmt: skip
    assert result.returncode == 1
    assert f"cannot serve on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
