"""Supervision and life cycle of real backends: crash, hang, concurrent deploys, undeploy."""

from __future__ import annotations

import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

from tests.support import ONE_ROW as ROW
from tests.support import (
    WINE_COLUMNS,
    WINE_VALUES,
    Gateway,
    pid_alive,
    processes_mentioning,
    wait_until,
)

KEY = "wine-quality-1"


def _group_members(pgid: int) -> list[int]:
    members = []
    for pid in processes_mentioning(""):
        try:
            if os.getpgid(pid) == pgid:
                members.append(pid)
        except ProcessLookupError:
            continue
    return members


def test_killed_backend_is_restarted(gateway: Gateway) -> None:
    before = gateway.wait_running(KEY)
    os.kill(before["pid"], signal.SIGKILL)
    after = gateway.wait_running(KEY, timeout=120, restarts=before["restarts"] + 1)
    assert after["pid"] != before["pid"]
    assert after["port"] == before["port"]
    assert gateway.post(f"/{KEY}", json_body=ROW).status == 200


def test_hung_backend_is_restarted(gateway: Gateway) -> None:
    before = gateway.wait_running(KEY)
    # SIGSTOP freezes the whole backend: it still holds its port but never answers.
    os.killpg(before["pid"], signal.SIGSTOP)
    after = gateway.wait_running(KEY, timeout=120, restarts=before["restarts"] + 1)
    assert after["pid"] != before["pid"]
    assert not pid_alive(before["pid"])
    assert gateway.post(f"/{KEY}", json_body=ROW).status == 200


def test_concurrent_deploys_start_one_process_and_undeploy_frees_everything(
    gateway: Gateway,
) -> None:
    free_before = gateway.get("/get_number_free_ports").json()
    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda _: gateway.post("/deploy/wine-quality/2"), range(4)))
    statuses = sorted(r.status for r in replies)
    assert statuses == [200, 200, 200, 201], [r.body for r in replies]
    ports = {r.json()["port"] for r in replies}
    assert len(ports) == 1
    entry = gateway.deployment("wine-quality-2")
    assert entry is not None and entry["status"] == "running"
    pid, port = entry["pid"], entry["port"]
    assert gateway.get("/get_number_free_ports").json() == free_before - 1
    assert gateway.post("/wine-quality-2", json_body=ROW).status == 200

    reply = gateway.post("/undeploy/wine-quality-2")
    assert reply.status == 200, reply.body
    assert reply.json()["freed_ports"] == [port]
    assert gateway.deployment("wine-quality-2") is None
    assert gateway.get("/get_number_free_ports").json() == free_before
    assert not pid_alive(pid)
    wait_until(lambda: not _group_members(pid), 10, what="the backend's process group to be gone")
    assert not processes_mentioning(f"--port {port}")
    assert gateway.post("/wine-quality-2", json_body=ROW).status == 404
    assert gateway.post("/undeploy/wine-quality-2").status == 404


def test_calls_on_a_killed_replica_are_answered_by_the_other(gateway: Gateway) -> None:
    # The finding of issue 14: with two replicas, calls in flight on a killed one
    # failed with 503 instead of going to the survivor (MLflow scoring is side-effect
    # free, so the gateway may send such a call again).
    reply = gateway.post("/deploy/wine-quality/2?replicas=2", timeout=150)
    try:
        assert reply.status == 201, reply.body
        victim = reply.json()["replicas"][0]
        rows = {"dataframe_split": {"columns": WINE_COLUMNS, "data": [WINE_VALUES] * 200}}
        answers: list[tuple[int, bytes]] = []
        stop = threading.Event()

        def client() -> None:
            while not stop.is_set():
                sent = gateway.post("/wine-quality-2", json_body=rows)
                answers.append((sent.status, sent.body))

        with ThreadPoolExecutor(4) as pool:
            clients = [pool.submit(client) for _ in range(4)]
            try:
                wait_until(lambda: len(answers) >= 20, 60, 0.01, "calls on both replicas")
                os.killpg(victim["pid"], signal.SIGKILL)
                after = len(answers)
                wait_until(lambda: len(answers) >= after + 20, 60, 0.01, "calls after the kill")
            finally:
                stop.set()
            for done in clients:
                done.result()
        assert [a for a in answers if a[0] != 200] == []
    finally:
        assert gateway.post("/undeploy/wine-quality-2").status == 200
