"""Helpers shared by the tests: free ports, a real gateway process, a small HTTP client."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_next_range = [20000 + (os.getpid() % 200) * 50]


def free_port_range(size: int) -> tuple[int, int]:
    """A block of `size` consecutive ports nobody listens on (best effort)."""
    while True:
        start = _next_range[0]
        _next_range[0] += size + 1
        if all(port_free(p) for p in range(start, start + size)):
            return start, start + size - 1


def port_free(port: int) -> bool:
    """Nothing listens on 127.0.0.1:`port` (SO_REUSEADDR, as a backend sets it: closed
    keep-alive connections may leave TIME_WAIT entries behind)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def processes_mentioning(text: str) -> list[int]:
    """Pids of live processes whose command line contains `text` (Linux)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmd and pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    port: int,
    method: str,
    path: str,
    *,
    json_body: Any = None,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 180.0,
) -> Reply:
    headers = dict(headers or {})
    if json_body is not None:
        body = json.dumps(json_body).encode()
        headers.setdefault("Content-Type", "application/json")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def wait_until(predicate: Any, timeout: float, interval: float = 0.2, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}: {last!r}")


@dataclass
class Gateway:
    """A real `python -m gateway serve` process on loopback."""

    data_dir: Path
    tracking_uri: str
    port: int = field(default_factory=unused_port)
    port_range: tuple[int, int] = field(default_factory=lambda: free_port_range(6))
    extra_env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            MLFLOW_TRACKING_URI=self.tracking_uri,
            GATEWAY_HOST="127.0.0.1",
            GATEWAY_PORT=str(self.port),
            START_PORT=str(self.port_range[0]),
            END_PORT=str(self.port_range[1]),
            GATEWAY_DATA_DIR=str(self.data_dir),
            GATEWAY_HEALTH_INTERVAL="0.5",
            GATEWAY_HEALTH_FAILURES="2",
            GATEWAY_STOP_TIMEOUT="3",
            GATEWAY_LOG_LEVEL="INFO",
            GATEWAY_BODY_TIMEOUT="2",
        )
        env.update(self.extra_env)
        return env

    def start(self) -> Gateway:
        log = open(self.data_dir.parent / f"gateway-{self.port}.log", "ab")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve"],
            env=self.env(),
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        wait_until(self._up, 60, 0.1, "the gateway to answer /health")
        return self

    def _up(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"gateway exited with {self.proc.returncode}:\n{self.log()}")
        try:
            return self.get("/health").status == 200
        except OSError:
            return False

    def log(self) -> str:
        path = self.data_dir.parent / f"gateway-{self.port}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def request(self, method: str, path: str, **kwargs: Any) -> Reply:
        return request(self.port, method, path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> Reply:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Reply:
        return self.request("POST", path, **kwargs)

    def deployment(self, key: str) -> dict[str, Any] | None:
        return self.get("/get_deployed_models").json().get(key)

    def wait_running(self, key: str, timeout: float = 120, **expect: Any) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            d = self.deployment(key)
            if d and d["status"] == "running" and d["replicas"][0]["healthy"]:
                if all(d.get(k) == v for k, v in expect.items()):
                    return d
            return None

        return wait_until(ready, timeout, 0.2, f"{key} to be running with {expect}")


@contextlib.contextmanager
def running_gateway(gateway: Gateway) -> Iterator[Gateway]:
    gateway.start()
    try:
        yield gateway
    finally:
        gateway.stop()


WINE_COLUMNS = [
    "alcohol", "malic_acid", "ash", "alcalinity_of_ash", "magnesium", "total_phenols",
    "flavanoids", "nonflavanoid_phenols", "proanthocyanins", "color_intensity", "hue",
    "od280_od315_of_diluted_wines", "proline",
]  # fmt: skip
WINE_VALUES = [13.0, 2.0, 2.4, 19.0, 100.0, 2.3, 2.0, 0.35, 1.6, 5.0, 1.0, 2.6, 750.0]
ONE_ROW = {"dataframe_split": {"columns": WINE_COLUMNS, "data": [WINE_VALUES]}}
