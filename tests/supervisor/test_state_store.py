"""The state file: desired state, port reservations, and files from older versions."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
from pathlib import Path

import pytest

from supervisor.errors import NoFreePort
from supervisor.state_store import DeploymentRecord, SavedBackend, StateStore
from tests.support import free_port_range


async def open_store(tmp_path: Path, size: int = 4) -> StateStore:
    start, end = free_port_range(size)
    return await StateStore.open(tmp_path / "state.db", range(start, end + 1))


def record(key: str) -> DeploymentRecord:
    name, _, version = key.rpartition("-")
    return DeploymentRecord(key=key, model_name=name, version=version)


async def add_with_ports(store: StateStore, key: str, replicas: int = 1) -> list[int]:
    await store.add(record(key), range(replicas))
    return await store.take_ports(key, range(replicas))


async def test_concurrent_reservations_get_distinct_ports(tmp_path: Path) -> None:
    store = await open_store(tmp_path, size=4)
    try:
        for i in range(5):
            await store.add(record(f"m-{i}"))
        ports = await asyncio.gather(*(store.take_ports(f"m-{i}", [0]) for i in range(4)))
        flat = [p for ps in ports for p in ps]
        assert sorted(flat) == list(store.port_range)
        with pytest.raises(NoFreePort):
            await store.take_ports("m-4", [0])
        # The failed reservation left the row without a port.
        assert (await store.load())[4][1] == [SavedBackend(0)]
    finally:
        await store.close()


async def test_a_reservation_is_all_or_none_and_kept_on_a_second_call(tmp_path: Path) -> None:
    store = await open_store(tmp_path, size=3)
    try:
        await store.add(record("m-1"), range(4))
        with pytest.raises(NoFreePort):
            await store.take_ports("m-1", range(4))
        assert await store.count_free_ports() == 3  # nothing half-taken
        first = await store.take_ports("m-1", [0, 1])
        assert await store.take_ports("m-1", [1, 0]) == first[::-1]
        assert await store.port_of("m-1", 1) == first[1]
        assert await store.port_of("m-1", 2) is None
    finally:
        await store.close()


async def test_a_port_held_by_another_process_is_skipped(tmp_path: Path) -> None:
    store = await open_store(tmp_path, size=2)
    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", store.port_range.start))
        holder.listen()
        assert await store.count_free_ports() == 1
        assert await add_with_ports(store, "m-1") == [store.port_range.start + 1]
        with pytest.raises(NoFreePort):
            await add_with_ports(store, "m-2")
    finally:
        holder.close()
        await store.close()


async def test_remove_frees_the_port_and_state_survives_reopen(tmp_path: Path) -> None:
    store = await open_store(tmp_path, size=2)
    ports = await add_with_ports(store, "m-1", replicas=2)
    await store.set_backend("m-1", 0, pid=4242, ref="4242", node="local", endpoint="http://x:1")
    await store.close()

    again = await StateStore.open(tmp_path / "state.db", store.port_range)
    try:
        [(rec, rows)] = await again.load()
        assert rec.key == "m-1" and [r.port for r in rows] == ports
        assert rows[0] == SavedBackend(0, ports[0], 4242, "4242", "local", "http://x:1")
        assert await again.count_free_ports() == 0
        await again.remove("m-1")
        assert await again.count_free_ports() == 2
        assert await again.load() == []
    finally:
        await again.close()


async def test_duplicate_key_is_rejected_atomically(tmp_path: Path) -> None:
    store = await open_store(tmp_path, size=3)
    try:
        await add_with_ports(store, "m-1")
        with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
            await store.add(record("m-1"), [5])
        [(_, rows)] = await store.load()
        assert [r.replica for r in rows] == [0]
        assert await store.count_free_ports() == 2
    finally:
        await store.close()


# The schema of files written before placements existed.
OLD_SCHEMA = """
CREATE TABLE deployments (
    key TEXT PRIMARY KEY, model_name TEXT NOT NULL, version TEXT NOT NULL, run_uuid TEXT,
    env_manager TEXT NOT NULL DEFAULT 'local', options TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL
);
CREATE TABLE backends (
    key TEXT NOT NULL REFERENCES deployments(key) ON DELETE CASCADE,
    replica INTEGER NOT NULL DEFAULT 0, port INTEGER NOT NULL UNIQUE, pid INTEGER,
    PRIMARY KEY (key, replica)
);
INSERT INTO deployments VALUES ('m-1', 'm', '1', 'run', 'local', '{"a": 1}', 1.0);
INSERT INTO backends VALUES ('m-1', 0, 20001, 77), ('m-1', 1, 20002, NULL);
"""


async def test_a_file_from_an_older_version_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as db:
        db.executescript(OLD_SCHEMA)
    db.close()

    for _ in range(2):  # the second open finds nothing left to migrate
        store = await StateStore.open(path, range(20001, 20004))
        try:
            [(rec, rows)] = await store.load()
            assert rec.options == {"a": 1}
            assert rows == [SavedBackend(0, 20001, 77), SavedBackend(1, 20002)]
            assert await store.count_free_ports() <= 1
        finally:
            await store.close()

    store = await StateStore.open(path, range(20001, 20004))
    try:
        # A row without a port is now possible, and UNIQUE(port) and the cascade still hold.
        await store.add(record("m-2"), [0])
        with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
            await store._db.execute("UPDATE backends SET port = 20001 WHERE key = 'm-2'")
        await store.remove("m-1")
        assert [r.key for r, _ in await store.load()] == ["m-2"]
    finally:
        await store.close()
