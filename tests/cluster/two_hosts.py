"""Two "hosts" on one machine: network namespaces A and B joined by a veth pair.

Host A (10.200.0.1) runs the Ray head, an `mlflow server` and the gateway; host
B (10.200.0.2) runs a Ray worker node that has the custom resource `host_b`.
Every process is started with `ip netns exec`, so whatever Ray binds on "*"
stays on that host's two interfaces (loopback and the link). Only addresses
made here are used, every command is bounded in time, and `down()` kills
everything in both namespaces (never `ray stop`, which would kill every Ray
process of the machine) and deletes them. Needs root and iproute2.

The cluster tests and `make bench` (section `ray`) share this set-up.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IP_A, IP_B = "10.200.0.1", "10.200.0.2"
RAY_PORT, MLFLOW_PORT, GATEWAY_PORT = 6390, 5000, 8000
# The GCS notices a lost node in about 2 s instead of 15-30 s.
FAST_HEALTH_CHECKS = json.dumps({
    "health_check_period_ms": 500, "health_check_timeout_ms": 500,
    "health_check_failure_threshold": 3, "health_check_initial_delay_ms": 0,
})  # fmt: skip
_CLIENT = """
import json, sys, time, urllib.error, urllib.request
method, url, body, timeout = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
req = urllib.request.Request(url, data=body.encode() or None, method=method,
                             headers={"Content-Type": "application/json"})
started = time.monotonic()
try:
    with urllib.request.urlopen(req, timeout=timeout) as reply:
        status, data = reply.status, reply.read()
except urllib.error.HTTPError as exc:
    status, data = exc.code, exc.read()
except OSError as exc:
    status, data = 0, str(exc).encode()
seconds = time.monotonic() - started
print(json.dumps({"status": status, "body": data.decode(errors="replace"), "seconds": seconds}))
"""


def why_not() -> str | None:
    """Why two namespaces cannot be built here, or None."""
    # Root of a user namespace (`unshare -rn`) is not enough: `ip netns` writes /run/netns.
    if os.geteuid() != 0 or not os.access("/run", os.W_OK):
        return "needs root: it builds two network namespaces joined by a veth pair"
    if not shutil.which("ip"):
        return "needs iproute2 (`ip`): it builds two network namespaces joined by a veth pair"
    return None


@dataclass
class TwoHosts:
    work: Path
    tag: str = field(default_factory=lambda: f"{os.getpid() % 100000}")
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    gateways: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    # Short: Ray's socket paths under it must fit in 107 bytes.
    ray_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="ray_mgw2_")))

    @property
    def a(self) -> str:
        return f"mgw{self.tag}a"

    @property
    def b(self) -> str:
        return f"mgw{self.tag}b"

    @property
    def ray_address(self) -> str:
        return f"{IP_A}:{RAY_PORT}"

    # ------------------------------------------------------------ the link

    def up(self) -> TwoHosts:
        self.work.mkdir(parents=True, exist_ok=True)
        veth_a, veth_b = f"mgw{self.tag}va", f"mgw{self.tag}vb"
        for command in (
            ["netns", "add", self.a],
            ["netns", "add", self.b],
            ["link", "add", veth_a, "type", "veth", "peer", "name", veth_b],
            ["link", "set", veth_a, "netns", self.a],
            ["link", "set", veth_b, "netns", self.b],
            ["-n", self.a, "addr", "add", f"{IP_A}/24", "dev", veth_a],
            ["-n", self.b, "addr", "add", f"{IP_B}/24", "dev", veth_b],
            ["-n", self.a, "link", "set", "lo", "up"],
            ["-n", self.b, "link", "set", "lo", "up"],
            ["-n", self.a, "link", "set", veth_a, "up"],
            ["-n", self.b, "link", "set", veth_b, "up"],
        ):
            subprocess.run(["ip", *command], check=True, capture_output=True, timeout=30)
        return self

    def down(self) -> None:
        """Kill everything in both namespaces, delete them and the work files (bounded)."""
        for ns in (self.a, self.b):
            for pid in self.pids(ns):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        for ns in (self.a, self.b):  # deleting a namespace deletes its end of the veth
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        shutil.rmtree(self.work, ignore_errors=True)
        shutil.rmtree(self.ray_dir, ignore_errors=True)

    def pids(self, ns: str) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                             timeout=30).stdout  # fmt: skip
        return [int(p) for p in out.split()]

    def netns_inode(self, ns: str) -> int:
        return os.stat(f"/run/netns/{ns}").st_ino

    # ------------------------------------------------------------ processes

    def run(self, ns: str, argv: list[str], timeout: float = 120) -> str:
        done = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True,
                              text=True, timeout=timeout)  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(
                f"{argv[:3]} failed in {ns}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
            )
        return done.stdout

    def spawn(
        self, ns: str, name: str, argv: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = open(self.work / f"{name}.log", "ab")
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        log.close()
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        path = self.work / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def http(
        self, method: str, url: str, body: Any = None, timeout: float = 180
    ) -> tuple[int, Any]:
        """An HTTP call made from host A (a client beside the gateway)."""
        status, answer, _ = self.timed_http(method, url, body, timeout)
        return status, answer

    def timed_http(
        self, method: str, url: str, body: Any = None, timeout: float = 180
    ) -> tuple[int, Any, float]:
        """Like `http`, with the seconds the call took (timed on host A)."""
        payload = "" if body is None else json.dumps(body)
        out = self.run(self.a, [sys.executable, "-c", _CLIENT, method, url, payload,
                                str(timeout)], timeout + 30)  # fmt: skip
        reply = json.loads(out)
        try:
            answer = json.loads(reply["body"])
        except ValueError:
            answer = reply["body"]
        return reply["status"], answer, reply["seconds"]

    def wait_http(self, url: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.http("GET", url, timeout=3)[0] == 200:
                return
            time.sleep(0.5)
        raise AssertionError(f"{url} did not answer within {timeout}s")

    # ------------------------------------------------------------ services

    def start_ray(self, pin: str | None = None, worker_cpus: int = 2) -> None:
        """The head (no CPUs) on A, a worker with resource host_b on B."""
        ray = [*(["taskset", "-c", pin] if pin else []), str(Path(sys.executable).parent / "ray")]
        self.run(self.a, [*ray, "start", "--head", f"--node-ip-address={IP_A}",
                          f"--port={RAY_PORT}", "--num-cpus=0", "--include-dashboard=false",
                          f"--temp-dir={self.ray_dir / 'a'}", "--disable-usage-stats",
                          f"--system-config={FAST_HEALTH_CHECKS}"])  # fmt: skip
        self.run(self.b, [*ray, "start", f"--address={self.ray_address}",
                          f"--node-ip-address={IP_B}", f"--num-cpus={worker_cpus}",
                          '--resources={"host_b": 1}', f"--temp-dir={self.ray_dir / 'b'}",
                          "--disable-usage-stats"])  # fmt: skip

    def start_mlflow(self) -> str:
        """An `mlflow server` with artifact serving on A; returns its URI."""
        root = self.work / "mlflow"
        root.mkdir(parents=True, exist_ok=True)
        uri = f"http://{IP_A}:{MLFLOW_PORT}"
        self.spawn(self.a, "mlflow", [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination", str(root / "artifacts"), "--serve-artifacts",
            "--host", IP_A, "--port", str(MLFLOW_PORT), "--workers", "1", "--allowed-hosts", "*",
        ], {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})  # fmt: skip
        self.wait_http(f"{uri}/health", 180)
        return uri

    def register(self, uri: str, name: str, versions: int = 1) -> None:
        """Train and register the demo model through the server, from host A."""
        code = ("import sys; from gateway.deploy.demo import train_and_register\n"
                "for _ in range(int(sys.argv[3])): train_and_register(sys.argv[1], sys.argv[2], reuse=False)")  # fmt: skip
        self.run(self.a, [sys.executable, "-c", code, uri, name, str(versions)], timeout=300)

    def start_gateway(
        self,
        name: str,
        tracking_uri: str,
        port: int = GATEWAY_PORT,
        pin: str | None = None,
        **extra: str,
    ) -> str:
        """A gateway on host A whose backends run on the cluster; returns its base URL."""
        data = self.work / name
        env = {
            **os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "GATEWAY_HOST": IP_A,
            "GATEWAY_PORT": str(port), "GATEWAY_DATA_DIR": str(data),
            "GATEWAY_PLACEMENT": "ray", "RAY_ADDRESS": self.ray_address, **extra,
        }  # fmt: skip
        argv = [*(["taskset", "-c", pin] if pin else []), sys.executable, "-m", "gateway", "serve"]
        self.gateways[name] = self.spawn(self.a, name, argv, env)
        url = f"http://{IP_A}:{port}"
        self.wait_http(f"{url}/health")
        return url
