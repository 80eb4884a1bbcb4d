"""The gateway as a user runs it, and what the soak reads of processes from /proc.

The gateway is our child in its own process group, started from an argv list;
`kill9` signals its pid alone, as the OOM killer would. What is left after the
final stop is found by pid (every backend pid the gateway ever reported), by
environment (any process whose GATEWAY_DATA_DIR is ours) and by listening port.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def port_range(size: int, first: int = 21000) -> tuple[int, int]:
    """`size` consecutive ports on loopback that nobody holds (best effort)."""
    start = first
    while start + size < 65000:
        if all(_bindable(p) for p in range(start, start + size)):
            return start, start + size - 1
        start += size
    raise RuntimeError("no free port range on 127.0.0.1")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class GatewayProcess:
    """`python -m gateway serve` with the soak's environment; restartable in place."""

    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    pids: list[int] = field(default_factory=list)  # every gateway pid, in order

    def start(self) -> int:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "serve"],
                env=self.env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        self.pids.append(self.proc.pid)
        return self.proc.pid

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> tuple[float, int | None]:
        """SIGKILL the gateway's pid alone and reap it: when (monotonic), its exit status."""
        assert self.proc is not None
        at = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        return at, self.proc.wait(30)

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM and wait (the gateway flushes its log and stops its backends);
        SIGKILL to its group past `timeout`."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(30)

    def log_tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""


# ------------------------------------------------------------------ /proc


def alive(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def usage(pid: int) -> dict[str, Any]:
    """Resident memory (MB), open files and threads of one process."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return {"pid": pid, "alive": False}
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {
        "pid": pid,
        "rss_mb": round(int(fields["VmRSS"].split()[0]) / 1024, 1),
        "fds": fds,
        "threads": int(fields["Threads"]),
    }


def processes_with_env(name: str, value: str) -> list[int]:
    """Live pids whose environment sets `name=value` (readable as root or as their owner)."""
    wanted = f"{name}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if wanted in (entry / "environ").read_bytes().split(b"\0") and alive(int(entry.name)):
                found.append(int(entry.name))
    return found


def command_line(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
    return ""


def listening_ports(ports: set[int]) -> list[int]:
    """Which of `ports` some socket on this host still listens on (/proc/net/tcp*)."""
    held = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                parts = line.split()
                if parts[3] == "0A":  # LISTEN
                    held.add(int(parts[1].rsplit(":", 1)[1], 16))
    return sorted(held & ports)


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Wait until none of `pids` is alive (bounded); those still alive."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(alive(p) for p in pids):
            return []
        time.sleep(0.1)
    return [p for p in pids if alive(p)]
