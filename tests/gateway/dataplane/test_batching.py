"""Adaptive batching, replicas, scaling and zero-downtime redeploy on the real model."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pandas as pd
import pytest
from sklearn.datasets import load_wine

from gateway.dataplane.batching import _split, mergeable
from gateway.dataplane.upstream import UpstreamResponse
from tests.support import ONE_ROW, Gateway

KEY = "wine-quality-1"


@pytest.fixture(scope="module")
def wine() -> pd.DataFrame:
    return load_wine(as_frame=True).data.rename(columns=lambda c: c.replace("/", "_"))


@pytest.fixture
def batching(gateway: Gateway):  # type: ignore[no-untyped-def]
    gateway.wait_running(KEY)
    reply = gateway.post("/deploy/wine-quality/1?max_batch_size=32&max_batch_delay_ms=2")
    assert reply.status == 200 and reply.json()["options"]["max_batch_size"] == 32
    yield
    assert gateway.post("/deploy/wine-quality/1?max_batch_size=1").status == 200
    assert gateway.deployment(KEY)["batching"] is None


def _body(rows: pd.DataFrame, fmt: str) -> dict[str, Any]:
    if fmt == "dataframe_split":
        return {"dataframe_split": json.loads(rows.to_json(orient="split", index=False))}
    return {fmt: rows.to_dict(orient="records")}


def test_batched_answers_equal_unbatched_answers(
    gateway: Gateway, batching: None, wine: pd.DataFrame, local_model: Any
) -> None:
    expected = local_model.predict(wine)
    jobs = []
    for i in range(0, 150, 3):  # 3-row calls, in three mergeable formats
        fmt = ("dataframe_split", "dataframe_records", "instances")[i % 3]
        jobs.append((i, _body(wine.iloc[i : i + 3], fmt)))

    def call(job: tuple[int, dict]) -> tuple[int, int, list]:
        start, body = job
        reply = gateway.post(f"/{KEY}", json_body=body)
        return start, reply.status, reply.json()["predictions"]

    with ThreadPoolExecutor(24) as pool:
        results = list(pool.map(call, jobs * 2))
    for start, status, predictions in results:
        assert status == 200
        assert predictions == list(expected[start : start + 3]), start
    stats = gateway.deployment(KEY)["batching"]
    assert stats["merged_calls"] > 0, stats  # calls really shared backend calls
    assert stats["batches"] < len(results)


def test_unmergeable_bodies_pass_through(
    gateway: Gateway, batching: None, wine: pd.DataFrame, local_model: Any
) -> None:
    rows = wine.iloc[:4]
    csv = gateway.post(
        f"/{KEY}", body=rows.to_csv(index=False).encode(), headers={"Content-Type": "text/csv"}
    )
    assert csv.status == 200 and csv.json()["predictions"] == list(local_model.predict(rows))
    columnar = gateway.post(f"/{KEY}", json_body={"inputs": rows.to_dict(orient="list")})
    assert columnar.status == 200 and columnar.json()["predictions"] == list(
        local_model.predict(rows)
    )


def test_a_bad_call_does_not_fail_its_neighbours(
    gateway: Gateway, batching: None, wine: pd.DataFrame, local_model: Any
) -> None:
    expected = local_model.predict(wine)
    bad = {"dataframe_records": [{"alcohol": "not a number"}]}
    jobs = [(i, _body(wine.iloc[[i]], "dataframe_records")) for i in range(60)]
    jobs[::10] = [(-1, bad)] * len(jobs[::10])

    def call(job: tuple[int, dict]) -> tuple[int, int, Any]:
        i, body = job
        reply = gateway.post(f"/{KEY}", json_body=body)
        return i, reply.status, reply.json()

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(call, jobs * 3))
    for i, status, body in results:
        if i < 0:
            assert status == 400 and "error_code" in body
        else:
            assert status == 200 and body["predictions"] == [expected[i]]


def test_merge_rules() -> None:
    split = json.dumps({"dataframe_split": {"columns": ["a"], "data": [[1], [2]]}}).encode()
    assert mergeable(split, "application/json") == (("dataframe_split", ("a",)), [[1], [2]])
    assert mergeable(b'{"instances": [1, 2]}', "application/json") == (("instances",), [1, 2])
    assert mergeable(b'{"instances": [1], "params": {"k": 1}}', "application/json") is None
    assert mergeable(b'{"inputs": [1]}', "application/json") is None
    assert mergeable(b"a\n1", "text/csv") is None
    assert mergeable(b'{"instances": []}', "application/json") is None
    json_type = [("Content-Type", "application/json")]
    assert _split(UpstreamResponse(200, json_type, b'{"predictions": [1, 2, 3]}'), [1, 2]) == [
        b'{"predictions": [1]}',
        b'{"predictions": [2, 3]}',
    ]
    assert _split(UpstreamResponse(200, json_type, b'{"predictions": [1, 2]}'), [1, 2]) is None
    assert _split(UpstreamResponse(400, json_type, b"{}"), [1]) is None


class Load:
    """A bounded concurrent load that records every status it sees."""

    def __init__(self, gateway: Gateway, threads: int = 6, max_seconds: float = 120) -> None:
        self.gateway, self.threads, self.deadline = gateway, threads, time.monotonic() + max_seconds
        self.stop = threading.Event()
        self.statuses: list[int] = []
        self._lock = threading.Lock()

    def _worker(self) -> None:
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            status = self.gateway.post(f"/{KEY}", json_body=ONE_ROW).status
            with self._lock:
                self.statuses.append(status)

    def __enter__(self) -> Load:
        self._pool = [threading.Thread(target=self._worker) for _ in range(self.threads)]
        for t in self._pool:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self._pool:
            t.join()


def test_scale_and_redeploy_under_load_fail_no_request(gateway: Gateway) -> None:
    before = gateway.wait_running(KEY)
    with Load(gateway) as load:
        time.sleep(0.5)
        scaled = gateway.post(f"/scale/{KEY}?replicas=2")
        assert scaled.status == 200, scaled.body
        assert len(scaled.json()["replicas"]) == 2
        time.sleep(0.5)
        ports = {r["port"] for r in gateway.deployment(KEY)["replicas"]}
        assert len(ports) == 2
        assert gateway.post(f"/scale/{KEY}?replicas=1").status == 200
        replaced = gateway.post("/deploy/wine-quality/1?replace=true")
        assert replaced.status == 200, replaced.body
        time.sleep(0.5)
    assert len(load.statuses) > 20
    assert set(load.statuses) == {200}, {s: load.statuses.count(s) for s in set(load.statuses)}
    after = gateway.deployment(KEY)
    assert len(after["replicas"]) == 1 and after["port"] != before["port"]
    assert (
        gateway.get("/get_number_free_ports").json()
        == gateway.port_range[1] - gateway.port_range[0]
    )


def test_scale_mistakes(gateway: Gateway) -> None:
    assert gateway.post(f"/scale/{KEY}").status == 400
    assert gateway.post(f"/scale/{KEY}?replicas=0").status == 400
    assert gateway.post(f"/scale/{KEY}?replicas=99").status == 400
    assert gateway.post("/scale/nope-1?replicas=2").status == 404
    assert gateway.post("/deploy/wine-quality/1?replace=maybe").status == 400
    assert gateway.post("/deploy/wine-quality/1?max_batch_size=0").status == 400
