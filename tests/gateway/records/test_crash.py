"""Acknowledged means logged: kill -9 of a real gateway never loses a call it answered 2xx.

One gateway of its own (the real demo model behind it) is killed and started again
by each test. A 2 s flush interval keeps answered calls waiting in the writer for a
while, as a busy gateway's do: what a kill then finds in memory only is gone, unless
the journal has it. At most 50 calls are held in memory, and a batch is 20 records.
"""

from __future__ import annotations

import http.client
import json
import signal
import sqlite3
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RegistryInfo
from tests.support import ONE_ROW, Gateway, request, wait_until

KEY = "wine-quality-1"


@pytest.fixture(scope="module")
def gw(registry: RegistryInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = Gateway(
        tmp_path_factory.mktemp("crash") / "data",
        registry.tracking_uri,
        extra_env={
            "GATEWAY_LOG_FLUSH_INTERVAL": "2",
            "GATEWAY_LOG_MAX_PENDING": "50",
            "GATEWAY_LOG_BATCH_SIZE": "20",
        },
    ).start()
    try:
        reply = gateway.post("/deploy/wine-quality/1")
        assert reply.status == 201, (reply.body, gateway.log())
        yield gateway
    finally:
        gateway.stop()


def log_stats(gw: Gateway) -> dict[str, Any]:
    stats = gw.get("/health").json()["inference_log"]
    assert isinstance(stats, dict)
    return stats


def logged_ids(gw: Gateway) -> set[str]:
    reply = gw.get(f"/model/{KEY}/dataset?format=jsonl")
    assert reply.status == 200, reply.body
    return {json.loads(line)["request_id"] for line in reply.body.splitlines()}


def test_kill_9_during_a_store_outage_loses_no_answered_call(gw: Gateway) -> None:
    ids = [f"outage-{i}" for i in range(40)]  # fewer than memory holds: none on disk only
    lost_before = log_stats(gw)["lost"]
    lock = sqlite3.connect(Path(gw.data_dir) / "inference.db", timeout=30)
    try:
        lock.execute("BEGIN EXCLUSIVE")  # the store is down: every write fails
        for rid in ids:
            reply = gw.post(f"/{KEY}", json_body=ONE_ROW, headers={"X-Request-ID": rid})
            assert reply.status == 200, reply.body
        wait_until(lambda: not log_stats(gw)["store_up"], 30, what="the writer to find it down")
        gw.stop(signal.SIGKILL)
    finally:
        lock.rollback()
        lock.close()
    gw.start()
    gw.wait_running(KEY)
    wait_until(lambda: set(ids) <= logged_ids(gw), 60, what="every answered call in the store")
    after = log_stats(gw)
    assert after["lost"] == lost_before and after["replayed"] >= 40


def test_memory_stays_bounded_through_an_outage(gw: Gateway) -> None:
    ids = [f"bounded-{i}" for i in range(120)]
    before = log_stats(gw)
    lock = sqlite3.connect(Path(gw.data_dir) / "inference.db", timeout=30)
    try:
        lock.execute("BEGIN EXCLUSIVE")
        for rid in ids:
            reply = gw.post(f"/{KEY}", json_body=ONE_ROW, headers={"X-Request-ID": rid})
            assert reply.status == 200, reply.body
            # Memory holds at most GATEWAY_LOG_MAX_PENDING calls and one batch.
            assert log_stats(gw)["pending"] <= 50 + 20
        wait_until(lambda: not log_stats(gw)["store_up"], 30, what="the writer to find it down")
        stats = log_stats(gw)
        assert stats["journaled"] - before["journaled"] == 120
        assert stats["spooled"] - before["spooled"] >= 120 - 50 - 20  # on disk only
    finally:
        lock.rollback()
        lock.close()
    wait_until(lambda: set(ids) <= logged_ids(gw), 60, what="every call in the store")
    assert log_stats(gw)["lost"] == before["lost"]


def test_kill_9_under_load_loses_no_answered_call(gw: Gateway) -> None:
    answered: list[str] = []
    stop = threading.Event()

    def caller(worker: int) -> None:
        for i in range(100_000):
            if stop.is_set():
                return
            rid = f"load-{worker}-{i}"
            try:
                reply = request(gw.port, "POST", f"/{KEY}", json_body=ONE_ROW,
                                headers={"X-Request-ID": rid}, timeout=60)  # fmt: skip
            except (OSError, http.client.HTTPException):
                return  # the gateway is gone: this call was never answered
            if reply.status == 200:
                answered.append(rid)

    with ThreadPoolExecutor(32) as pool:
        workers = [pool.submit(caller, w) for w in range(32)]
        try:
            wait_until(lambda: len(answered) >= 300, 120, 0.01, "300 answered calls")
            gw.stop(signal.SIGKILL)  # while 32 calls are in flight
        finally:
            stop.set()
        for worker in workers:
            worker.result(timeout=120)
    gw.start()
    gw.wait_running(KEY)
    wait_until(
        lambda: set(answered) <= logged_ids(gw), 60, what=f"all {len(answered)} answered calls"
    )


def test_lost_survives_restarts_and_is_exported(gw: Gateway) -> None:
    before = log_stats(gw)["lost"]
    gw.stop(signal.SIGKILL)
    journal = Path(gw.data_dir) / "journal"
    # A frame cut short (what a crash mid-write or a power cut leaves) in a segment
    # numbered after any real one.
    (journal / "seg-000000900000.log").write_bytes((300).to_bytes(4, "little") + b"\x00" * 20)
    gw.start()
    wait_until(lambda: log_stats(gw)["torn"] == 1, 30, what="the torn frame to be found")
    assert log_stats(gw)["lost"] == before + 1
    metrics = gw.get("/metrics").body.decode()
    assert f'modelgw_inference_log_records_total{{outcome="lost"}} {before + 1}.0' in metrics
    for how in (signal.SIGTERM, signal.SIGKILL):
        gw.stop(how)
        gw.start()
        assert log_stats(gw)["lost"] == before + 1
    gw.wait_running(KEY)
