"""V2 calls share batches with /invocations calls and are logged like them (real model).

On the shared gateway's `wine-quality-1` with batching on, concurrent V2 and
`/invocations` calls of one row each must all get the model's own predictions
while backend calls are merged; the V2 rows must show up in the dataset export.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pandas as pd
import pytest
from sklearn.datasets import load_wine

from tests.support import WINE_COLUMNS, Gateway, wait_until

KEY = "wine-quality-1"
# A marker no real wine has, so the logged V2 rows can be found in the export.
MARKER = 11.111


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


def _v2_body(row: pd.Series) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": c, "datatype": "FP64", "shape": [1], "data": [float(row[c])]}
            for c in WINE_COLUMNS
        ]
    }


def test_v2_and_invocations_calls_batch_together(
    gateway: Gateway, batching: None, wine: pd.DataFrame, local_model: Any
) -> None:
    rows = wine.iloc[:60].copy()
    rows.loc[rows.index[::6], "alcohol"] = MARKER
    expected = local_model.predict(rows)
    jobs = [(i, i % 2 == 0) for i in range(len(rows))] * 2

    def call(job: tuple[int, bool]) -> tuple[int, bool, int, Any]:
        i, v2 = job
        row = rows.iloc[i]
        if v2:
            reply = gateway.post(
                "/v2/models/wine-quality/versions/1/infer", json_body=_v2_body(row)
            )
            answer = reply.json()
            value = answer["outputs"][0]["data"] if reply.status == 200 else answer
        else:
            body = {"dataframe_split": {"columns": WINE_COLUMNS, "data": [[float(row[c]) for c in WINE_COLUMNS]]}}  # fmt: skip
            reply = gateway.post(f"/{KEY}/invocations", json_body=body)
            value = reply.json()["predictions"] if reply.status == 200 else reply.json()
        return i, v2, reply.status, value

    before = gateway.deployment(KEY)["batching"]["merged_calls"]
    with ThreadPoolExecutor(24) as pool:
        results = list(pool.map(call, jobs))
    for i, v2, status, value in results:
        assert status == 200, (v2, value)
        assert value == [expected[i]], (i, v2)
    stats = gateway.deployment(KEY)["batching"]
    assert stats["merged_calls"] > before, stats  # backend calls really were shared

    # The V2 calls were logged as the MLflow calls they became. The marked rows are
    # all sent through V2 only (every sixth row: an even index), twice each.
    marked = {float(rows.iloc[i]["flavanoids"]): expected[i] for i in range(0, len(rows), 6)}

    def logged() -> list[dict[str, Any]]:
        lines = gateway.get(f"/model/{KEY}/dataset?format=jsonl").body.splitlines()
        return [r for r in map(json.loads, lines) if r["alcohol"] == MARKER]

    wait_until(lambda: len(logged()) >= 2 * len(marked), 20, what="the V2 rows logged")
    found = logged()
    assert len(found) == 2 * len(marked)
    for record in found:
        assert record["prediction"] == marked[record["flavanoids"]]
