"""One child process in its own process group, with its output in a log file."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from supervisor.errors import BackendStartError

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _parent_death_hook() -> Callable[[], None] | None:
    """A pre-exec hook that makes the kernel SIGKILL the child when we die.

    libc is loaded here, in the parent, so the hook run between fork and exec
    only makes one system call. Linux only; elsewhere the process group and the
    boot-time sweep of recorded groups are the safety net.
    """
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

    def hook() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)

    return hook


_PDEATHSIG_HOOK = _parent_death_hook()


@dataclass(frozen=True, slots=True)
class Command:
    """An argument vector and its environment; never a shell string."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None


class ChildProcess:
    """A started child. Its pid is also its process-group id."""

    def __init__(self, proc: asyncio.subprocess.Process, log_path: Path) -> None:
        self._proc = proc
        self.log_path = log_path

    @classmethod
    async def spawn(cls, command: Command, log_path: Path) -> ChildProcess:
        log_file = await asyncio.to_thread(_open_log, log_path)
        with log_file:
            try:
                proc = await asyncio.create_subprocess_exec(
                    *command.argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=asyncio.subprocess.STDOUT,
                    env=command.env or None,
                    cwd=command.cwd,
                    # Own process group: stop() signals the whole tree, and a
                    # Ctrl-C at the terminal reaches only the gateway, which then
                    # stops children in order.
                    start_new_session=True,
                    preexec_fn=_PDEATHSIG_HOOK,
                )
            except OSError as exc:
                raise BackendStartError(f"cannot start {command.argv[0]!r}: {exc}") from exc
        logger.debug("spawned pid %d: %s", proc.pid, command.argv)
        return cls(proc, log_path)

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    async def wait(self) -> int:
        return await self._proc.wait()

    def signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass  # the whole group is already gone

    def group_exists(self) -> bool:
        try:
            os.killpg(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    async def stop(self, timeout: float) -> int:
        """SIGTERM the group, wait up to `timeout`, then SIGKILL the group.

        Returns only when every member of the group is gone, so the port the
        backend listened on is free again: the leader (e.g. the `mlflow` CLI)
        can exit before the server it started.
        """
        deadline = asyncio.get_running_loop().time() + timeout
        if self.returncode is None:
            self.signal_group(signal.SIGTERM)
            try:
                await asyncio.wait_for(self._proc.wait(), timeout)
            except TimeoutError:
                logger.warning("pid %d ignored SIGTERM for %.1fs; killing", self.pid, timeout)
                self.signal_group(signal.SIGKILL)
                await self._proc.wait()
        if not await self._group_gone_by(deadline):
            self.signal_group(signal.SIGKILL)
            await self._group_gone_by(asyncio.get_running_loop().time() + 5.0)
        return self._proc.returncode if self._proc.returncode is not None else -1

    async def _group_gone_by(self, deadline: float) -> bool:
        loop = asyncio.get_running_loop()
        while self.group_exists():
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def log_tail(self, max_lines: int = 25) -> str:
        # Room for lines of up to 1 KiB on average, within 1 MiB.
        max_bytes = min(max(16384, max_lines * 1024), 1 << 20)
        return await asyncio.to_thread(read_tail, self.log_path, max_lines, max_bytes)


def _open_log(path: Path) -> BinaryIO:
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "ab", buffering=0)


def read_tail(path: Path, max_lines: int, max_bytes: int) -> str:
    """The last `max_lines` lines of a file, reading at most `max_bytes`.

    The text ends with a newline exactly when the file does (a follower tells a
    finished last line from one still being written), and a line cut by the
    `max_bytes` window is left out rather than shown in part.
    """
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            start = max(0, size - max_bytes)
            f.seek(start)
            data = f.read()
    except FileNotFoundError:
        return ""
    lines = data.decode("utf-8", "replace").splitlines()
    if start > 0 and lines:
        lines = lines[1:]  # began mid-line (or just after a newline: a whole line lost)
    text = "\n".join(lines[-max_lines:])
    return text + "\n" if text and data.endswith(b"\n") else text


def sweep_orphan_group(pgid: int, marker: str) -> bool:
    """Kill a process group left by an earlier gateway, if it is still ours.

    A group counts as ours only when one of its members' command lines contains
    `marker` (the backend's port argument), so a recycled pid is never touched.
    Linux only (reads /proc); returns True when something was killed.
    """
    proc_dir = Path("/proc")
    if not proc_dir.is_dir():
        return False
    ours = False
    for entry in proc_dir.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            # Field 5 (pgrp) follows the ")" that closes the command name.
            pgrp = int(stat.rsplit(")", 1)[1].split()[2])
            if pgrp != pgid:
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError, IndexError):
            continue
        if marker in cmdline:
            ours = True
            break
    if not ours:
        return False
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    logger.warning("killed orphaned backend process group %d (%s)", pgid, marker)
    return True
