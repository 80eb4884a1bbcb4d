"""A real Ray cluster and a real `mlflow server` on this machine, for the cluster tests.

Ray's servers listen on every interface whatever address a node is given, so
these tests run only inside a private network namespace that has nothing but
loopback: `make test` runs them as `unshare -n sh -c 'ip link set lo up && ...'`.
Anywhere else they are skipped with that reason. Nodes use 127.0.0.2: Ray
rewrites 127.0.0.1 into the host's outside address, which a private namespace
does not have.

One cluster (a head with no CPUs and two worker nodes with distinct custom
resources) serves the whole session; the tests' own process connects to it
as a driver to inspect actors. It is never stopped with `ray stop`, which
kills every Ray process of the machine: only its own nodes are killed.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support import REPO, pid_alive, unused_port, wait_until

NODE_IP = "127.0.0.2"
# The GCS notices a dead node within about 2 s instead of 15-30 s.
FAST_HEALTH_CHECKS = {
    "health_check_period_ms": 500,
    "health_check_timeout_ms": 500,
    "health_check_failure_threshold": 3,
    "health_check_initial_delay_ms": 0,
}
WORKER_CPUS = 4
# Distinct custom resources: a test pins a replica to a node by asking for one.
WORKERS = ({"zone_a": 1.0, "models": 4.0}, {"zone_b": 1.0, "models": 4.0})


def in_private_netns() -> bool:
    """Whether this process's network namespace has no interface but loopback."""
    try:
        lines = Path("/proc/net/dev").read_text().splitlines()[2:]
    except OSError:
        return False
    return {line.split(":", 1)[0].strip() for line in lines} == {"lo"}


def _why_not() -> str | None:
    if importlib.util.find_spec("ray") is None:
        return "ray is not installed (pip install -e '.[test]' installs it)"
    if not in_private_netns():
        return (
            "Ray listens on every interface, so this runs only in a private network"
            " namespace with nothing but loopback: `make test-cluster` (part of `make test`)"
        )
    return None


# `make test` selects these with `-m cluster` inside the namespace; elsewhere they skip.
needs_private_netns = [
    pytest.mark.cluster,
    pytest.mark.skipif(_why_not() is not None, reason=_why_not() or ""),
]


@dataclass
class RayTestCluster:
    """The session's Ray cluster: `address` for drivers, node handles to kill."""

    cluster: Any
    temp_dir: Path
    workers: list[Any] = field(default_factory=list)

    @property
    def address(self) -> str:
        return str(self.cluster.address)

    def add_worker(self, resources: dict[str, float]) -> Any:
        node = self.cluster.add_node(
            num_cpus=WORKER_CPUS, resources=resources, node_ip_address=NODE_IP,
            temp_dir=str(self.temp_dir), include_dashboard=False,
        )  # fmt: skip
        self.workers.append(node)
        return node

    def ensure_workers(self) -> None:
        """Bring back a worker a test killed, with the same resources (one cluster per session)."""
        import ray

        alive = {
            key
            for n in ray.nodes()
            if n["Alive"]
            for key in n["Resources"]
            if key.startswith("zone_")
        }
        for resources in WORKERS:
            zone = next(k for k in resources if k.startswith("zone_"))
            if zone not in alive:
                self.add_worker(resources)
        self.cluster.wait_for_nodes()

    def node_of(self, node_id: str) -> Any:
        return next(n for n in self.workers if n.node_id == node_id)

    def kill_raylet(self, node_id: str) -> None:
        """SIGKILL the raylet of a worker node, as a lost host would; then reap its rest."""
        node = self.node_of(node_id)
        raylet = node.all_processes["raylet"][0].process
        os.kill(raylet.pid, signal.SIGKILL)
        raylet.wait(10)

    def forget(self, node_id: str) -> None:
        node = self.node_of(node_id)
        self.workers.remove(node)
        with contextlib.suppress(Exception):
            self.cluster.remove_node(node, allow_graceful=False)


@functools.cache
def shared_cluster() -> RayTestCluster:
    """Start the session's cluster once and connect this process to it."""
    import ray
    from ray.cluster_utils import Cluster

    temp_dir = Path(tempfile.mkdtemp(prefix="ray_mgwt_"))
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0, "include_dashboard": False, "node_ip_address": NODE_IP,
            "temp_dir": str(temp_dir), "_system_config": FAST_HEALTH_CHECKS,
        },
    )  # fmt: skip
    test_cluster = RayTestCluster(cluster, temp_dir)
    for resources in WORKERS:
        test_cluster.add_worker(resources)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace="modelgw-tests", log_to_driver=False,
             configure_logging=False)  # fmt: skip
    atexit.register(shutdown_shared_cluster)  # runs before the Cluster's own exit hook
    return test_cluster


def shutdown_shared_cluster() -> None:
    if shared_cluster.cache_info().currsize == 0:
        return
    import ray

    test_cluster = shared_cluster()
    ray.shutdown()
    test_cluster.cluster.shutdown()
    shutil.rmtree(test_cluster.temp_dir, ignore_errors=True)
    shared_cluster.cache_clear()


def named_actors(namespace: str) -> list[str]:
    import ray

    return sorted(
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["namespace"] == namespace
    )


def kill_namespace(namespace: str) -> None:
    """Remove every actor of a test's namespace (detached actors outlive their creator)."""
    import ray

    for name in named_actors(namespace):
        with contextlib.suppress(ValueError):
            ray.kill(ray.get_actor(name, namespace=namespace), no_restart=True)


def wait_dead(pid: int, timeout: float = 15.0) -> None:
    wait_until(lambda: not pid_alive(pid), timeout, 0.05, f"pid {pid} to end")


class Forwarder:
    """A TCP port that, once opened, forwards to `target`: a cluster that comes back.

    Byte for byte, one thread pair per connection; daemon threads, so a test that
    fails never waits for them.
    """

    def __init__(self, port: int, target: str) -> None:
        self.port = port
        host, _, target_port = target.rpartition(":")
        self.target = (host, int(target_port))
        self._sockets: list[socket.socket] = []

    def open(self) -> None:
        server = socket.create_server((NODE_IP, self.port))
        self._sockets.append(server)
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def close(self) -> None:
        for sock in self._sockets:  # ends the accept loop and every pump
            sock.close()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
                self._sockets.append(client)
                upstream = socket.create_connection(self.target)
                self._sockets.append(upstream)
            except OSError:
                return  # closed
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


# ------------------------------------------------------------------ mlflow server


@dataclass
class MlflowServer:
    """`mlflow server` with artifact serving: the nodes fetch model files over HTTP."""

    root: Path
    host: str = "127.0.0.1"
    port: int = field(default_factory=unused_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
            "--artifacts-destination", str(self.root / "artifacts"),
            "--serve-artifacts", "--host", self.host, "--port", str(self.port),
            "--workers", "1", "--allowed-hosts", "*",
        ]  # fmt: skip

    def start(self, prefix: list[str] | None = None) -> MlflowServer:
        self.root.mkdir(parents=True, exist_ok=True)
        log = open(self.root / "server.log", "ab")
        self.proc = subprocess.Popen(
            [*(prefix or []), *self.command()], stdout=log, stderr=subprocess.STDOUT,
            cwd=self.root, start_new_session=True, env=SERVER_ENV,
        )  # fmt: skip
        log.close()
        wait_until(self._up, 180, 0.2, "the mlflow server to answer /health")
        return self

    def _up(self) -> bool:
        import urllib.request

        assert self.proc is not None
        if self.proc.poll() is not None:
            log = (self.root / "server.log").read_text(errors="replace")[-3000:]
            raise AssertionError(f"mlflow server exited:\n{log}")
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as reply:
                return bool(reply.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


# No background job runners (a dozen processes the tests never use).
SERVER_ENV = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


@contextlib.contextmanager
def mlflow_server(root: Path) -> Iterator[MlflowServer]:
    server = MlflowServer(root)
    try:
        yield server.start()
    finally:
        server.stop()


def ray_gateway_env(address: str, namespace: str) -> dict[str, str]:
    """Settings of a gateway whose backends run on the cluster at `address`."""
    return {
        "GATEWAY_PLACEMENT": "ray",
        "RAY_ADDRESS": address,
        "GATEWAY_RAY_NAMESPACE": namespace,
        "PYTHONPATH": str(REPO),
    }
