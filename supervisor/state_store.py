"""Desired state and port reservations, kept in SQLite through aiosqlite.

The manager writes the deployments and one row per replica; a placement that
runs backends on this machine reserves ports on those rows. Ports are taken in
one `BEGIN IMMEDIATE` transaction, so two gateways sharing the file cannot take
the same port, and `UNIQUE(port)` backs that up. A port that another process on
this machine already holds is skipped.
"""

from __future__ import annotations

import asyncio
import errno
import json
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosqlite

from supervisor.errors import NoFreePort

# The desired-state schema ships inside the package (the top-level schema.sql links to it).
SCHEMA_PATH = Path(__file__).with_name("schema.sql")

# The `backends` table as schema.sql creates it; used to rebuild an older one
# (SQLite cannot drop a NOT NULL constraint in place). Keep the two in step.
_BACKENDS_DDL = """CREATE TABLE backends_new (
    key       TEXT NOT NULL REFERENCES deployments(key) ON DELETE CASCADE,
    replica   INTEGER NOT NULL DEFAULT 0,
    port      INTEGER UNIQUE,
    pid       INTEGER,
    ref       TEXT,
    node      TEXT,
    endpoint  TEXT,
    PRIMARY KEY (key, replica)
)"""
_ADDED_COLUMNS = ("ref", "node", "endpoint")


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


@dataclass(frozen=True, slots=True)
class SavedBackend:
    """What the file remembers of one replica: its reservation and last start."""

    replica: int
    port: int | None = None
    pid: int | None = None
    ref: str | None = None
    node: str | None = None
    endpoint: str | None = None


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
    """The supervisor's SQLite file: deployments (desired state) and their replicas."""

    def __init__(self, db: aiosqlite.Connection, port_range: range, host: str) -> None:
        self._db = db
        # Defaults for the port calls; the local placement passes its own.
        self.port_range = port_range
        self._host = host
        # One connection is shared by all coroutines; a transaction must not interleave.
        self._lock = asyncio.Lock()

    @classmethod
    async def open(
        cls, path: Path, port_range: range = range(0), host: str = "127.0.0.1"
    ) -> StateStore:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(path, isolation_level=None)
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA busy_timeout=5000")
            await db.executescript(await asyncio.to_thread(SCHEMA_PATH.read_text))
            await db.execute("PRAGMA foreign_keys=ON")
            await _migrate(db)
        except BaseException:
            await db.close()
            raise
        return cls(db, port_range, host)

    async def close(self) -> None:
        await self._db.close()

    # ------------------------------------------------------------ desired state

    async def add(self, record: DeploymentRecord, replicas: Iterable[int] = (0,)) -> None:
        """Insert `record` with one row per replica index, atomically."""
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
                await self._insert_replicas(record.key, replicas)
            except BaseException:
                await self._db.execute("ROLLBACK")
                raise
            await self._db.execute("COMMIT")

    async def add_replicas(self, key: str, replicas: Iterable[int]) -> None:
        """One more row per replica index of an existing deployment."""
        async with self._lock:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                await self._insert_replicas(key, replicas)
            except BaseException:
                await self._db.execute("ROLLBACK")
                raise
            await self._db.execute("COMMIT")

    async def _insert_replicas(self, key: str, replicas: Iterable[int]) -> None:
        await self._db.executemany(
            "INSERT INTO backends (key, replica) VALUES (?, ?)", [(key, r) for r in replicas]
        )

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

    async def save_route(self, name: str, route: dict[str, Any]) -> None:
        """Keep a model's traffic route (the gateway's, opaque here) for the next boot."""
        async with self._lock:
            await self._db.execute(
                "INSERT INTO routes (name, route) VALUES (?, ?)"
                " ON CONFLICT(name) DO UPDATE SET route = excluded.route",
                (name, json.dumps(route)),
            )

    async def remove_route(self, name: str) -> None:
        async with self._lock:
            await self._db.execute("DELETE FROM routes WHERE name = ?", (name,))

    async def load_routes(self) -> dict[str, dict[str, Any]]:
        async with self._db.execute("SELECT name, route FROM routes ORDER BY name") as cursor:
            return {row[0]: json.loads(row[1]) async for row in cursor}

    async def set_backend(
        self,
        key: str,
        replica: int,
        *,
        pid: int | None,
        ref: str | None,
        node: str | None,
        endpoint: str | None,
    ) -> None:
        """Remember where a replica was started, for the next boot."""
        async with self._lock:
            await self._db.execute(
                "UPDATE backends SET pid = ?, ref = ?, node = ?, endpoint = ?"
                " WHERE key = ? AND replica = ?",
                (pid, ref, node, endpoint, key, replica),
            )

    async def load(self) -> list[tuple[DeploymentRecord, list[SavedBackend]]]:
        """Every deployment with its replicas' rows, oldest deployment first."""
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
                "SELECT replica, port, pid, ref, node, endpoint FROM backends"
                " WHERE key = ? ORDER BY replica",
                (record.key,),
            ) as cursor:
                rows = [SavedBackend(*row) async for row in cursor]
            result.append((record, rows))
        return result

    # ------------------------------------------------------------------- ports

    async def take_ports(
        self,
        key: str,
        replicas: Sequence[int],
        port_range: range | None = None,
        host: str | None = None,
    ) -> list[int]:
        """A port for each replica row of `key`, all or none.

        A row that already holds a port keeps it, so a restart or a second call
        gets the same one.
        """
        port_range = self.port_range if port_range is None else port_range
        host = self._host if host is None else host
        async with self._lock:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                ports = await self._take_ports(key, replicas, port_range, host)
            except BaseException:
                await self._db.execute("ROLLBACK")
                raise
            await self._db.execute("COMMIT")
        return ports

    async def _take_ports(
        self, key: str, replicas: Sequence[int], port_range: range, host: str
    ) -> list[int]:
        async with self._db.execute(
            "SELECT replica, port FROM backends WHERE key = ?", (key,)
        ) as c:
            held = {row[0]: row[1] async for row in c}
        async with self._db.execute("SELECT port FROM backends WHERE port IS NOT NULL") as c:
            taken = {row[0] async for row in c}
        ports: list[int] = []
        candidates = (p for p in port_range if p not in taken)
        for replica in replicas:
            if replica not in held:
                raise KeyError(f"{key}#{replica} has no row to reserve a port on")
            port = held[replica]
            if port is None:
                port = next((p for p in candidates if port_is_bindable(p, host)), None)
                if port is None:
                    raise NoFreePort(
                        f"no free port in {port_range.start}-{port_range.stop - 1}:"
                        " every port is reserved by a deployment or held by another process"
                    )
                await self._db.execute(
                    "UPDATE backends SET port = ? WHERE key = ? AND replica = ?",
                    (port, key, replica),
                )
            ports.append(port)
        return ports

    async def port_of(self, key: str, replica: int) -> int | None:
        async with self._db.execute(
            "SELECT port FROM backends WHERE key = ? AND replica = ?", (key, replica)
        ) as cursor:
            row = await cursor.fetchone()
        return None if row is None else row[0]

    async def count_free_ports(
        self, port_range: range | None = None, host: str | None = None
    ) -> int:
        """Ports of the range that are neither reserved nor held by another process."""
        port_range = self.port_range if port_range is None else port_range
        host = self._host if host is None else host
        async with self._db.execute("SELECT port FROM backends WHERE port IS NOT NULL") as cursor:
            taken = {row[0] async for row in cursor}
        return sum(1 for p in port_range if p not in taken and port_is_bindable(p, host))


async def _migrate(db: aiosqlite.Connection) -> None:
    """Bring a file written by an earlier version to the current schema.

    Those had `backends.port NOT NULL` and no ref/node/endpoint columns. The
    check runs again inside the transaction, so two gateways opening the same
    old file at once migrate it once.
    """
    if not await _needs_migration(db):
        return
    await db.execute("BEGIN IMMEDIATE")
    try:
        if await _needs_migration(db):
            columns = await _backends_columns(db)
            if columns["port"]:  # NOT NULL: rebuild the table without it
                await db.execute(_BACKENDS_DDL)
                await db.execute(
                    "INSERT INTO backends_new (key, replica, port, pid)"
                    " SELECT key, replica, port, pid FROM backends"
                )
                await db.execute("DROP TABLE backends")
                await db.execute("ALTER TABLE backends_new RENAME TO backends")
            else:
                for name in _ADDED_COLUMNS:
                    if name not in columns:
                        await db.execute(f"ALTER TABLE backends ADD COLUMN {name} TEXT")
    except BaseException:
        await db.execute("ROLLBACK")
        raise
    await db.execute("COMMIT")


async def _needs_migration(db: aiosqlite.Connection) -> bool:
    columns = await _backends_columns(db)
    return bool(columns["port"]) or any(name not in columns for name in _ADDED_COLUMNS)


async def _backends_columns(db: aiosqlite.Connection) -> dict[str, int]:
    """Column name -> its NOT NULL flag."""
    async with db.execute("PRAGMA table_info(backends)") as cursor:
        return {row[1]: row[3] async for row in cursor}
