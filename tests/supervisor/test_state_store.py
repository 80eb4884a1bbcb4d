"""Port reservations in SQLite: distinct, skip held ports, exhaustion, release."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from supervisor.errors import NoFreePort
from supervisor.state_store import DeploymentRecord, StateStore
from tests.support import free_port_range


async def open_store(tmp_path: Path, size: int = 4) -> StateStore:
    start, end = free_port_range(size)
    return await StateStore.open(tmp_path / "state.db", range(start, end + 1))


def record(key: str) -> DeploymentRecord:
    name, _, version = key.rpartition("-")
    return DeploymentRecord(key=key, model_name=name, version=version)


async def test_concurrent_reservations_get_distinct_ports(tmp_path: Path) -> None:
    store = await open_store(tmp_path, size=4)
    try:
        ports = await asyncio.gather(*(store.reserve(record(f"m-{i}")) for i in range(4)))
        flat = [p for ps in ports for p in ps]
        assert sorted(flat) == list(store.port_range)
        with pytest.raises(NoFreePort):
            await store.reserve(record("m-9"))
        # The failed reservation left no deployment behind.
        assert [r.key for r, _ in await store.load()] == [f"m-{i}" for i in range(4)]
    finally:
        await store.close()


async def test_a_port_held_by_another_process_is_skipped(tmp_path: Path) -> None:
    store = await open_store(tmp_path, size=2)
    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", store.port_range.start))
        holder.listen()
        assert await store.count_free_ports() == 1
        assert await store.reserve(record("m-1")) == [store.port_range.start + 1]
        with pytest.raises(NoFreePort):
            await store.reserve(record("m-2"))
    finally:
        holder.close()
        await store.close()


async def test_remove_frees_the_port_and_state_survives_reopen(tmp_path: Path) -> None:
    store = await open_store(tmp_path, size=2)
    ports = await store.reserve(record("m-1"), replicas=2)
    await store.set_pid("m-1", 0, 4242)
    await store.close()

    again = await StateStore.open(tmp_path / "state.db", store.port_range)
    try:
        [(rec, rows)] = await again.load()
        assert rec.key == "m-1" and [r[1] for r in rows] == ports and rows[0][2] == 4242
        assert await again.count_free_ports() == 0
        await again.remove("m-1")
        assert await again.count_free_ports() == 2
        assert await again.load() == []
    finally:
        await again.close()


async def test_duplicate_key_is_rejected_atomically(tmp_path: Path) -> None:
    store = await open_store(tmp_path, size=3)
    try:
        await store.reserve(record("m-1"))
        with pytest.raises(Exception, match="UNIQUE"):
            await store.reserve(record("m-1"))
        assert await store.count_free_ports() == 2
    finally:
        await store.close()
