"""A gateway whose backends run on a real multi-node Ray cluster (GATEWAY_PLACEMENT=ray).

The cluster is the session's (a head without CPUs, workers zone_a and zone_b);
the model comes from a real `mlflow server` with artifact serving, which is
what a node on another host reads. Starting a gateway and a deployment costs
seconds on Ray, so the module shares one gateway (its own Ray namespace) and
its tests run in order: requests that fail, a pinned deployment, then one
deployment of two replicas that lives through gateway restarts, a boot while
the cluster is away, and finally the loss of a node.
"""

from __future__ import annotations

import signal
import sqlite3
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest

from tests.cluster.conftest import ServedRegistry
from tests.cluster.harness import (
    NODE_IP,
    Forwarder,
    RayTestCluster,
    kill_namespace,
    named_actors,
    needs_private_netns,
    ray_gateway_env,
    wait_dead,
)
from tests.support import (
    ONE_ROW,
    WINE_COLUMNS,
    Gateway,
    processes_mentioning,
    unused_port,
    wait_until,
)

pytestmark = needs_private_netns

KEY = "wine-quality-1"
WAIT = 120.0  # bound on a deploy or a recovery; never asserted as a duration


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory,
    ray_cluster: RayTestCluster,
    served_registry: ServedRegistry,
) -> Iterator[Gateway]:
    env = {
        **ray_gateway_env(ray_cluster.address, f"gw-{uuid.uuid4().hex[:8]}"),
        "GATEWAY_DEPLOY_TIMEOUT": "90",
    }
    gateway = Gateway(tmp_path_factory.mktemp("ray-gw") / "data", served_registry.uri,
                      extra_env=env).start()  # fmt: skip
    try:
        yield gateway
    finally:
        gateway.stop(signal.SIGKILL)
        kill_namespace(namespace_of(gateway))
        ray_cluster.ensure_workers()


def namespace_of(gw: Gateway) -> str:
    return gw.extra_env["GATEWAY_RAY_NAMESPACE"]


def deploy(gw: Gateway, query: str = "") -> Any:
    return gw.post(f"/deploy/wine-quality/1?{quote(query, safe='=&')}", timeout=WAIT)


def replicas(gw: Gateway) -> list[dict[str, Any]]:
    entry = gw.deployment(KEY)
    assert entry is not None, f"{KEY} is not deployed"
    return list(entry["replicas"])


def all_running(gw: Gateway, count: int) -> list[dict[str, Any]] | None:
    entry = gw.deployment(KEY)
    if entry is None or len(entry["replicas"]) != count:
        return None
    ok = all(r["status"] == "running" and r["healthy"] for r in entry["replicas"])
    return list(entry["replicas"]) if ok else None


def backend_pids(endpoint: str) -> list[int]:
    """The scoring server behind `endpoint`, found by its --host/--port arguments."""
    host, port = endpoint.removeprefix("http://").rsplit(":", 1)
    return processes_mentioning(f"--host {host} --port {port}")


@pytest.mark.parametrize(
    ("query", "why"),
    [
        ('resources={"gpu_farm": 1}', "gpu_farm 1 (a node has none)"),
        ("num_cpus=64", "CPU 64 (a node has at most 4)"),
        ("memory_mb=10000000", "memory 10000000 MiB"),
        ('resources={"zone_a": 1, "zone_b": 1}', "no single node has all of them"),
    ],
)
def test_a_request_no_node_can_hold_fails_at_once_and_leaves_nothing(
    gw: Gateway, query: str, why: str
) -> None:
    reply = deploy(gw, f"replicas=2&{query}")
    assert reply.status == 502, reply.body
    body = reply.json()
    assert body["error"] == "deploy_failed"
    assert "no node of the Ray cluster can hold" in body["detail"] and why in body["detail"]
    assert gw.deployment(KEY) is None
    assert named_actors(namespace_of(gw)) == []


def test_a_pinned_deployment_lands_where_its_resource_is_and_undeploys_cleanly(
    gw: Gateway,
) -> None:
    import ray

    reply = deploy(gw, 'replicas=2&resources={"zone_b": 0.5}')
    assert reply.status == 201, (reply.body, gw.log())
    zone_b = {n["NodeID"] for n in ray.nodes() if n["Alive"] and "zone_b" in n["Resources"]}
    assert {r["node"] for r in replicas(gw)} == zone_b  # both there: no other node can
    pids = [pid for r in replicas(gw) for pid in backend_pids(r["endpoint"])]
    assert len(pids) == 2

    assert gw.post(f"/undeploy/{KEY}").status == 200
    assert named_actors(namespace_of(gw)) == []
    for pid in pids:  # the actors' servers end with them
        wait_dead(pid)


def test_replicas_spread_over_nodes_and_predict_like_the_model(
    gw: Gateway, served_model: Any
) -> None:
    reply = deploy(gw, "replicas=2")
    assert reply.status == 201, (reply.body, gw.log())
    shown = replicas(gw)
    assert len({r["node"] for r in shown}) == 2, shown  # two different nodes
    for replica in shown:
        assert replica["endpoint"].startswith("http://127.0.0.2:")
        assert replica["pid"] is None  # not a process of the gateway's host
        assert backend_pids(replica["endpoint"])
    assert named_actors(namespace_of(gw)) == [f"{KEY}#0", f"{KEY}#1"]

    import pandas as pd

    rows = [[13.0 + i / 10, 2.0, 2.4, 19.0, 100.0, 2.3, 2.0, 0.35, 1.6, 5.0, 1.0, 2.6, 750.0 + i]
            for i in range(8)]  # fmt: skip
    expected = [int(v) for v in served_model.predict(pd.DataFrame(rows, columns=WINE_COLUMNS))]
    body = {"dataframe_split": {"columns": WINE_COLUMNS, "data": rows}}
    for _ in range(4):  # both replicas answer in turn
        reply = gw.post(f"/{KEY}", json_body=body)
        assert reply.status == 200, reply.body
        assert reply.json()["predictions"] == expected


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_restarted_gateway_reattaches_and_models_keep_serving(
    gw: Gateway, how: signal.Signals
) -> None:
    before = wait_until(lambda: all_running(gw, 2), WAIT, 0.2, "two running replicas")
    pids = {r["endpoint"]: backend_pids(r["endpoint"]) for r in before}

    gw.stop(how)
    # No gateway runs, and the backends serve on, untouched.
    assert {r["endpoint"]: backend_pids(r["endpoint"]) for r in before} == pids
    gw.start()

    after = wait_until(lambda: all_running(gw, 2), WAIT, 0.2, "re-attached replicas")
    assert [r["endpoint"] for r in after] == [r["endpoint"] for r in before]
    assert [r["node"] for r in after] == [r["node"] for r in before]
    assert [r["restarts"] for r in after] == [0, 0]
    assert {r["endpoint"]: backend_pids(r["endpoint"]) for r in after} == pids
    assert gw.post(f"/{KEY}", json_body=ONE_ROW).status == 200


def test_a_cluster_away_at_boot_is_waited_for_then_orphans_are_swept(
    gw: Gateway, ray_cluster: RayTestCluster
) -> None:
    """The gateway starts without its cluster, says why its deployment waits, and once
    the cluster answers, adopts the backend that still runs and stops the orphan."""
    before = wait_until(lambda: all_running(gw, 2), WAIT, 0.2, "two running replicas")
    gw.stop(signal.SIGKILL)
    # The desired state forgets replica 1 while no gateway runs: its actor is an orphan.
    with sqlite3.connect(gw.data_dir / "state.db") as db:
        db.execute("DELETE FROM backends WHERE key = ? AND replica = 1", (KEY,))

    away = Forwarder(unused_port(), ray_cluster.address)  # closed: nobody answers there
    gw.extra_env["RAY_ADDRESS"] = f"{NODE_IP}:{away.port}"
    try:
        gw.start()  # the gateway starts all the same
        waiting = wait_until(
            lambda: (r := gw.deployment(KEY)) and r["replicas"][0]["last_error"] and r,
            WAIT, 0.2, "the reason the deployment waits",
        )  # fmt: skip
        assert (
            f"cannot reach the Ray cluster at {NODE_IP}:{away.port}"
            in (waiting["replicas"][0]["last_error"])
        )
        assert waiting["status"] in ("backoff", "starting")
        assert gw.get("/get_number_free_ports").json() == 0
        assert named_actors(namespace_of(gw)) == [f"{KEY}#0", f"{KEY}#1"]  # none swept blindly

        away.open()  # the cluster answers again: the next retry gets through
        [kept] = wait_until(lambda: all_running(gw, 1), WAIT, 0.2, "the wanted replica")
        assert kept["endpoint"] == before[0]["endpoint"] and kept["restarts"] == 0  # adopted
        wait_until(lambda: named_actors(namespace_of(gw)) == [f"{KEY}#0"], WAIT, 0.2, "the sweep")
        for pid in backend_pids(before[1]["endpoint"]):
            wait_dead(pid)
        assert gw.get("/get_number_free_ports").json() > 0  # free CPUs, counted in replicas
    finally:
        gw.stop(signal.SIGKILL)
        away.close()
        gw.extra_env["RAY_ADDRESS"] = ray_cluster.address

    gw.start()
    assert gw.post(f"/scale/{KEY}?replicas=2", timeout=WAIT).status == 200
    spread = wait_until(lambda: all_running(gw, 2), WAIT, 0.2, "two replicas again")
    assert len({r["node"] for r in spread}) == 2


def test_a_lost_node_restarts_its_replica_on_another(
    gw: Gateway, ray_cluster: RayTestCluster
) -> None:
    lost, kept = wait_until(lambda: all_running(gw, 2), WAIT, 0.2, "two running replicas")
    old_pids = backend_pids(lost["endpoint"])

    ray_cluster.kill_raylet(lost["node"])

    after = wait_until(
        lambda: (r := all_running(gw, 2)) and r[0]["restarts"] >= 1 and r,
        WAIT, 0.5, "the lost replica to run again",
    )  # fmt: skip
    assert after[0]["node"] != lost["node"] and after[0]["endpoint"] != lost["endpoint"]
    assert after[1]["endpoint"] == kept["endpoint"] and after[1]["restarts"] == 0
    assert gw.deployment(KEY)["restarts"] >= 1  # type: ignore[index]
    for pid in old_pids:  # nothing of the lost backend is left running
        wait_dead(pid)
    for _ in range(4):
        assert gw.post(f"/{KEY}", json_body=ONE_ROW).status == 200
    ray_cluster.forget(lost["node"])
