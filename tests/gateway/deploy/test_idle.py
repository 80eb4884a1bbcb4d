"""Scale to zero on the real wine model, in a gateway process of its own.

Idle stops the backend and frees its port; a gateway restart leaves it idle; a
burst of concurrent calls wakes it once and every call is served.
"""

from __future__ import annotations

import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import RegistryInfo
from tests.support import ONE_ROW, Gateway, pid_alive, port_free, wait_until

KEY = "wine-quality-1"


@pytest.fixture
def own_gateway(registry: RegistryInfo, tmp_path: Path) -> Gateway:
    return Gateway(tmp_path / "data", registry.tracking_uri)


def metric(gw: Gateway, line_start: str) -> float:
    text = gw.get("/metrics").body.decode()
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_idle_frees_the_backend_stays_idle_over_a_restart_and_wakes_once(
    own_gateway: Gateway,
) -> None:
    gw = own_gateway.start()
    try:
        bad = gw.post("/deploy/wine-quality/1?max_concurrency=-1")
        assert bad.status == 400 and "max_concurrency" in bad.json()["detail"]
        # Admission sized for the burst below (2 in flight + 6 queued = 8): nothing shed.
        deployed = gw.post("/deploy/wine-quality/1?idle_timeout_s=2&max_concurrency=2&max_queue=6")
        assert deployed.status == 201, deployed.body
        assert deployed.json()["options"]["idle_timeout_s"] == 2
        first = gw.wait_running(KEY)
        admission = first["admission"]
        assert admission["max_concurrency"] == 2 and admission["max_queue"] == 6
        pid, port = first["pid"], first["port"]

        idle = wait_until(
            lambda: (d := gw.deployment(KEY)) and d["status"] == "idle" and d, 60,
            what=f"{KEY} to go idle",
        )  # fmt: skip
        assert idle["replicas"] == []
        wait_until(lambda: not pid_alive(pid), 15, what="the idle backend to exit")
        assert port_free(port)

        gw.stop(signal.SIGTERM)
        gw.start()
        assert gw.deployment(KEY)["status"] == "idle"  # the restart woke nothing

        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda _: gw.post(f"/{KEY}", json_body=ONE_ROW), range(8)))
        assert [r.status for r in replies] == [200] * 8, [r.body for r in replies]
        assert all("predictions" in r.json() for r in replies)

        woken = gw.deployment(KEY)
        assert woken["status"] == "running" and len(woken["replicas"]) == 1
        assert woken["admission"]["in_flight"] == 0 and woken["admission"]["shed"] == 0
        assert metric(gw, f'modelgw_cold_starts_total{{key="{KEY}"}}') == 1.0
        assert metric(gw, f'modelgw_cold_start_seconds_count{{key="{KEY}"}}') == 1.0

        # The data API predicts through the model too: an idle deployment wakes for it.
        wait_until(lambda: gw.deployment(KEY)["status"] == "idle", 60, what=f"{KEY} idle again")
        snapshot = gw.post(
            f"/model/{KEY}/set_new_metrics",
            json_body={"dataframe_split": ONE_ROW["dataframe_split"], "results": [5]},
        )
        assert snapshot.status == 201, snapshot.body
        assert snapshot.json()["n_samples"] == 1
        assert metric(gw, f'modelgw_cold_starts_total{{key="{KEY}"}}') == 2.0
    finally:
        gw.stop()
