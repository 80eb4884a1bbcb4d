"""The Ray actor that runs one backend on whichever node Ray placed it.

It runs inside a Ray worker process on a cluster node, so that node needs this
package installed (the same version as the gateway). The actor asks a command
factory for the backend's command on its own node (the factory downloads the
model there), starts it as a child in its own process group, and reports where
it listens. Nothing it starts may outlive it:

- the child gets the parent-death signal, armed from the actor's event-loop
  thread. The signal fires when the *thread* that forked exits, and every
  method of an async actor runs on that one thread, which lives as long as the
  worker process;
- the worker itself gets the parent-death signal towards its raylet, plus a
  watchdog thread: Ray leaves a worker running for minutes when only its
  raylet is killed, and the backend with it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import re
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from supervisor.process import ChildProcess, Command
from supervisor.state_store import DeploymentRecord

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1

NodeCommandFactory = Callable[[DeploymentRecord, int, str], Awaitable[Command]]
"""Builds the backend's command for (record, port, host), evaluated on the node.

It travels to the node pickled, so it must be a module-level function or an
instance of a module-level class that the node's Python can import.
"""


def fingerprint(record: DeploymentRecord) -> str:
    """What makes a running backend fit a record: re-attach only when equal."""
    return f"{record.model_name}\0{record.version}\0{record.run_uuid}\0{record.env_manager}"


def log_dir(namespace: str) -> Path:
    """Where backends of this gateway's namespace write their output on a node."""
    return Path(tempfile.gettempdir()) / "modelgw-ray" / _safe(namespace) / "logs"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._@=-]", "_", name)


def _free_port(host: str) -> int:
    # Bind-and-close leaves a small race with other processes of the node; a
    # backend that loses it exits at once and is restarted elsewhere.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _die_with_raylet() -> None:
    """Make this worker end when its raylet does (Linux)."""
    if not sys.platform.startswith("linux"):
        return
    raylet = os.getppid()
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != raylet:  # it died before the signal was armed
        os._exit(1)

    def watch() -> None:
        # Belt and braces: a re-parented worker exits even without the signal.
        while os.getppid() == raylet:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="modelgw-raylet-watch", daemon=True).start()


class BackendActor:
    """One backend replica: a child process on this node, and what it reports."""

    def __init__(self, name: str, namespace: str, fingerprint: str) -> None:
        _die_with_raylet()
        import ray

        self.name = name
        self.namespace = namespace
        self.fingerprint = fingerprint
        self.node_id = ray.get_runtime_context().get_node_id()
        self.host = ray.util.get_node_ip_address()
        self.port: int | None = None
        self._child: ChildProcess | None = None

    def where(self) -> dict[str, Any]:
        """Answers once the actor runs: the scheduler has placed it."""
        return {"node_id": self.node_id, "host": self.host, "worker_pid": os.getpid()}

    async def launch(self, factory: NodeCommandFactory, record: DeploymentRecord) -> dict[str, Any]:
        """Build the command here, on the node, and start it; returns describe()."""
        if self._child is not None:
            return self.describe()
        self.port = _free_port(self.host)
        command = await factory(record, self.port, self.host)
        path = log_dir(self.namespace) / f"{_safe(self.name)}.{os.getpid()}.log"
        # Spawned from this (the event-loop) thread: see the module docstring.
        self._child = await ChildProcess.spawn(command, path)
        return self.describe()

    def describe(self) -> dict[str, Any]:
        child = self._child
        return {
            "name": self.name,
            "fingerprint": self.fingerprint,
            "node_id": self.node_id,
            "host": self.host,
            "port": self.port,
            "worker_pid": os.getpid(),
            "child_pid": child.pid if child is not None else None,
            "returncode": child.returncode if child is not None else None,
        }

    async def wait_exit(self) -> int:
        """The backend's exit code, once it has exited."""
        assert self._child is not None, "launch() first"
        return await self._child.wait()

    async def stop(self, grace: float) -> int | None:
        """Stop the backend's process group: SIGTERM, then SIGKILL after `grace`."""
        if self._child is None:
            return None
        return await self._child.stop(grace)

    async def log_tail(self, lines: int) -> str:
        if self._child is None:
            return ""
        return await self._child.log_tail(lines)
