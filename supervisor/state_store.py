"""Desired state and port reservations, kept in SQLite through aiosqlite.

Ports are reserved in one `BEGIN IMMEDIATE` transaction, so two gateways sharing
the file cannot take the same port, and `UNIQUE(port)` backs that up. A port that
another process on this machine already holds is skipped.
"""

from __future__ import annotations

import asyncio
import errno
import json
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosqlite

from supervisor.errors import NoFreePort

# The desired-state schema ships inside the package (the top-level schema.sql links to it).
SCHEMA_PATH = Path(__file__).with_name("schema.sql")


@dataclass(slots=True)
class DeploymentRecord:
    """What the user asked for: serve `model_name` at `version`."""

    key: str
    model_name: str
    version: str
    run_uuid: str | None = None
    env_manager: str = "local"
    options: dict[str, Any] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)


def port_is_bindable(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing on this machine listens on `host:port`.

    SO_REUSEADDR mirrors what the backend's server sets, so a port in TIME_WAIT
    after a restart still counts as free.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
                return False
            raise
    return True


class StateStore:
    """The supervisor's SQLite file: deployments (desired state) and their ports."""

    def __init__(self, db: aiosqlite.Connection, port_range: range, host: str) -> None:
        self._db = db
        self.port_range = port_range
        self._host = host
        # One connection is shared by all coroutines; a transaction must not interleave.
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path, port_range: range, host: str = "127.0.0.1") -> StateStore:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(path, isolation_level=None)
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA busy_timeout=5000")
            await db.executescript(await asyncio.to_thread(SCHEMA_PATH.read_text))
            await db.execute("PRAGMA foreign_keys=ON")
        except BaseException:
            await db.close()
            raise
        return cls(db, port_range, host)

    async def close(self) -> None:
        await self._db.close()

    async def reserve(self, record: DeploymentRecord, replicas: int = 1) -> list[int]:
        """Insert `record` and reserve `replicas` ports for it, atomically."""
        async with self._lock:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                await self._db.execute(
                    "INSERT INTO deployments"
                    " (key, model_name, version, run_uuid, env_manager, options, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        record.key,
                        record.model_name,
                        record.version,
                        record.run_uuid,
                        record.env_manager,
                        json.dumps(record.options),
                        record.created_at,
                    ),
                )
                ports = await self._take_ports(record.key, range(replicas))
            except BaseException:
                await self._db.execute("ROLLBACK")
                raise
            await self._db.execute("COMMIT")
        return ports

    async def add_replicas(self, key: str, replicas: Iterable[int]) -> list[int]:
        """Reserve one more port per replica index of an existing deployment."""
        async with self._lock:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                ports = await self._take_ports(key, replicas)
            except BaseException:
                await self._db.execute("ROLLBACK")
                raise
            await self._db.execute("COMMIT")
        return ports

    async def _take_ports(self, key: str, replicas: Iterable[int]) -> list[int]:
        async with self._db.execute("SELECT port FROM backends") as cursor:
            taken = {row[0] async for row in cursor}
        ports: list[int] = []
        candidates = (p for p in self.port_range if p not in taken)
        for replica in replicas:
            port = next((p for p in candidates if port_is_bindable(p, self._host)), None)
            if port is None:
                raise NoFreePort(
                    f"no free port in {self.port_range.start}-{self.port_range.stop - 1}:"
                    " every port is reserved by a deployment or held by another process"
                )
            await self._db.execute(
                "INSERT INTO backends (key, replica, port) VALUES (?, ?, ?)",
                (key, replica, port),
            )
            ports.append(port)
        return ports

    async def remove(self, key: str) -> None:
        """Forget a deployment and free its ports."""
        async with self._lock:
            await self._db.execute("DELETE FROM deployments WHERE key = ?", (key,))

    async def remove_replica(self, key: str, replica: int) -> None:
        async with self._lock:
            await self._db.execute(
                "DELETE FROM backends WHERE key = ? AND replica = ?", (key, replica)
            )

    async def update_record(self, record: DeploymentRecord) -> None:
        async with self._lock:
            await self._db.execute(
                "UPDATE deployments SET run_uuid = ?, env_manager = ?, options = ? WHERE key = ?",
                (record.run_uuid, record.env_manager, json.dumps(record.options), record.key),
            )

    async def set_pid(self, key: str, replica: int, pid: int | None) -> None:
        async with self._lock:
            await self._db.execute(
                "UPDATE backends SET pid = ? WHERE key = ? AND replica = ?", (pid, key, replica)
            )

    async def load(self) -> list[tuple[DeploymentRecord, list[tuple[int, int, int | None]]]]:
        """Every deployment with its (replica, port, last pid) rows, oldest first."""
        async with self._db.execute(
            "SELECT key, model_name, version, run_uuid, env_manager, options, created_at"
            " FROM deployments ORDER BY created_at"
        ) as cursor:
            records = [
                DeploymentRecord(
                    key=row[0],
                    model_name=row[1],
                    version=row[2],
                    run_uuid=row[3],
                    env_manager=row[4],
                    options=json.loads(row[5]),
                    created_at=row[6],
                )
                async for row in cursor
            ]
        result = []
        for record in records:
            async with self._db.execute(
                "SELECT replica, port, pid FROM backends WHERE key = ? ORDER BY replica",
                (record.key,),
            ) as cursor:
                rows = [(r[0], r[1], r[2]) async for r in cursor]
            result.append((record, rows))
        return result

    async def count_free_ports(self) -> int:
        """Ports of the range that are neither reserved nor held by another process."""
        async with self._db.execute("SELECT port FROM backends") as cursor:
            taken = {row[0] async for row in cursor}
        return sum(1 for p in self.port_range if p not in taken and port_is_bindable(p, self._host))
