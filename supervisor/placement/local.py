"""Backends as child processes on this machine, each on a reserved local port.

Children get their own process group and die with the gateway (Linux's
parent-death signal), so nothing survives a restart to re-attach to: `attach`
kills whatever a crash might have left in a recorded group and starts anew.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence, Set
from pathlib import Path

from supervisor.errors import BackendStartError
from supervisor.placement.base import BackendHandle, Placement
from supervisor.process import ChildProcess, Command, sweep_orphan_group
from supervisor.state_store import DeploymentRecord, SavedBackend, StateStore

logger = logging.getLogger(__name__)

CommandFactory = Callable[[DeploymentRecord, int, str], Awaitable[Command]]
"""Builds the command that serves `record` on (port, host); the gateway knows how."""


class LocalHandle(BackendHandle):
    """A child process (and its process group) listening on a local port."""

    def __init__(self, process: ChildProcess, host: str, port: int) -> None:
        self.process = process
        self.host = host
        self.port = port
        self.node = "local"
        self.pid = process.pid
        self.ref = str(process.pid)

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    async def wait_exit(self) -> int:
        return await self.process.wait()

    async def stop(self, grace: float) -> None:
        await self.process.stop(grace)

    async def log_tail(self, lines: int = 25) -> str:
        return await self.process.log_tail(lines)


class LocalPlacement(Placement):
    """Child processes on this machine; ports come from the state file's range."""

    name = "local"

    def __init__(
        self,
        store: StateStore,
        command_factory: CommandFactory,
        log_dir: Path,
        *,
        port_range: range | None = None,
        host: str = "127.0.0.1",
        stop_timeout: float = 10.0,
    ) -> None:
        self._store = store
        self._factory = command_factory
        self.log_dir = log_dir
        self.port_range = store.port_range if port_range is None else port_range
        self.host = host
        self._stop_timeout = stop_timeout
        # The latest handle of every replica started here, for sweep and close.
        self._started: dict[tuple[str, int], LocalHandle] = {}

    async def reserve(self, record: DeploymentRecord, replicas: Sequence[int]) -> None:
        await self._store.take_ports(record.key, replicas, self.port_range, self.host)

    async def start(self, record: DeploymentRecord, replica: int) -> LocalHandle:
        port = await self._store.port_of(record.key, replica)
        if port is None:  # a row written before its reservation (a crash in between)
            [port] = await self._store.take_ports(record.key, [replica], self.port_range, self.host)
        try:
            command = await self._factory(record, port, self.host)
        except Exception as exc:
            raise BackendStartError(
                f"could not build the backend command: {type(exc).__name__}: {exc}"
            ) from exc
        process = await ChildProcess.spawn(command, self.log_dir / f"{record.key}.{replica}.log")
        handle = LocalHandle(process, self.host, port)
        self._forget_ended()
        self._started[(record.key, replica)] = handle
        return handle

    async def attach(
        self, record: DeploymentRecord, replica: int, saved: SavedBackend
    ) -> LocalHandle | None:
        # A child normally dies with the gateway; one that did not (no parent-death
        # signal on this platform, or it raced the exit) would hold the port.
        if saved.pid and saved.port:
            await asyncio.to_thread(sweep_orphan_group, saved.pid, str(saved.port))
        return None

    async def sweep(self, wanted: Set[tuple[str, int]]) -> None:
        unwanted = [(k, h) for k, h in self._started.items() if k not in wanted]
        for slot, handle in unwanted:
            if handle.alive:
                logger.warning("stopping unwanted backend %s#%d (pid %d)", *slot, handle.pid)
            await handle.stop(self._stop_timeout)
            self._started.pop(slot, None)

    async def close(self) -> None:
        await asyncio.gather(*(h.stop(self._stop_timeout) for h in self._started.values()))
        self._started.clear()

    async def count_free_ports(self) -> int:
        return await self._store.count_free_ports(self.port_range, self.host)

    def _forget_ended(self) -> None:
        for slot, handle in list(self._started.items()):
            if not handle.alive:
                del self._started[slot]
