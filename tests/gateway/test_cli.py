"""The `modelgw` command: help, settings errors, a taken port and the demo answer clearly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ONE_ROW, free_port_range, request, unused_port, wait_until


def modelgw(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                          text=True, timeout=120, env=env)  # fmt: skip


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ": error: " in line]


def test_help_documents_every_setting() -> None:
    result = modelgw("serve", "--help")
    assert result.returncode == 0
    for name in ("GATEWAY_PORT", "START_PORT", "END_PORT", "GATEWAY_DATA_DIR", "MLFLOW_TRACKING_URI",
                 "GATEWAY_DEPLOY_TIMEOUT", "GATEWAY_ADMIN_TOKEN", "GATEWAY_MAX_BODY_MB"):  # fmt: skip
        assert name in result.stdout, name


def test_invalid_settings_are_refused_before_start(tmp_path: Path) -> None:
    result = modelgw(
        "serve", "--start-port", "9100", "--end-port", "9000", "--data-dir", str(tmp_path / "d")
    )
    assert result.returncode == 2
    assert "END_PORT" in result.stderr
    assert not (tmp_path / "d").exists()


def test_a_bad_setting_is_one_line_under_the_usage_and_never_shows_a_secret(tmp_path: Path) -> None:
    env = dict(os.environ, START_PORT="8100", END_PORT="8000", GATEWAY_ADMIN_TOKEN="tok-8c1f-secret",
               GATEWAY_INFERENCE_TOKEN="inf-77aa-secret", GATEWAY_DATA_DIR=str(tmp_path))  # fmt: skip
    result = modelgw("serve", env=env)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: modelgw serve ")
    assert error_lines(result.stderr) == [
        "modelgw serve: error: END_PORT (8000) is below START_PORT (8100): expected END_PORT >= START_PORT"
    ]
    assert "tok-8c1f-secret" not in result.stderr + result.stdout
    assert "inf-77aa-secret" not in result.stderr + result.stdout
    assert "pydantic" not in result.stderr


def test_each_bad_setting_names_its_variable_and_what_it_expects(tmp_path: Path) -> None:
    env = dict(os.environ, GATEWAY_LAUNCHER="fast", GATEWAY_ADMIN_TOKEN="tok-8c1f-secret")
    result = modelgw("demo", "--port", "abc", "--deploy-timeout", "-1", "--data-dir", str(tmp_path), env=env)  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith("usage: modelgw demo ")
    assert sorted(error_lines(result.stderr)) == [
        "modelgw demo: error: GATEWAY_DEPLOY_TIMEOUT: expected a number above 0, got '-1'",
        "modelgw demo: error: GATEWAY_LAUNCHER: expected one of lean, mlflow, got 'fast'",
        "modelgw demo: error: GATEWAY_PORT: expected an integer from 1 to 65535, got 'abc'",
    ]
    assert "tok-8c1f-secret" not in result.stderr


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


@pytest.mark.parametrize("command", ["serve", "demo"])
def test_a_taken_port_is_one_line_before_any_database_or_training(
    command: str, taken_port: int, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    result = modelgw(command, "--port", str(taken_port), "--data-dir", str(data),
                     "--start-port", "21001", "--end-port", "21002", env=env)  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"modelgw: cannot serve on 127.0.0.1:{taken_port}: the port is in use; "
        "choose another with GATEWAY_PORT or --port"
    ]
    assert not data.exists()  # no state, inference or MLflow database, no model trained


class Demo:
    """`modelgw demo` as `make run` starts it, its stdout read as it comes."""

    def __init__(self, data_dir: Path, port: int, port_range: tuple[int, int]) -> None:
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        env.update(GATEWAY_DATA_DIR=str(data_dir), GATEWAY_PORT=str(port),
                   START_PORT=str(port_range[0]), END_PORT=str(port_range[1]))  # fmt: skip
        self.port = port
        self.lines: list[str] = []
        self.log = data_dir.parent / f"demo-{port}.log"
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "gateway", "demo"], env=env,
                                         text=True, stdout=subprocess.PIPE, stderr=log)  # fmt: skip
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def announced(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"demo exited with {self.proc.returncode}: {self.lines}")
        if "ERROR gateway.deploy.demo" in self.log.read_text():
            raise AssertionError(f"the demo gave up:\n{self.log.read_text()[-3000:]}")
        return any("Press Ctrl-C" in line for line in self.lines)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.reader.join(10)  # reads to the end of the pipe, then the pipe can close
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.mark.integration
def test_demo_prints_its_curl_lines_only_once_the_model_answers(tmp_path: Path) -> None:
    # The second run restores the recorded deployment, still starting when its
    # deploy call returns: the printed lines must work the moment they appear.
    data, port, ports = tmp_path / "data", unused_port(), free_port_range(3)
    for run in (1, 2):
        demo = Demo(data, port, ports)
        try:
            wait_until(demo.announced, 240, 0.05, f"run {run} to print its curl lines")
            reply = request(port, "POST", "/wine-quality-1", json_body=ONE_ROW)
            assert reply.status == 200, (run, reply.status, reply.body)
            printed = "".join(demo.lines)
            assert f"curl -s -X POST http://127.0.0.1:{port}/wine-quality-1 " in printed
        finally:
            demo.stop()
