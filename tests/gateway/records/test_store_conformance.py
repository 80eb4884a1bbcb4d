"""One behaviour suite for every store: SQLite always, MongoDB whenever MONGODB_URI is set."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.records.rows import record_rows
from gateway.records.stores.base import Baseline, InferenceRecord, MetricsSnapshot, Store


@pytest.fixture(params=["sqlite", "mongodb"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        from gateway.records.stores.sqlite import SQLiteStore

        s: Store = SQLiteStore(tmp_path / "inference.db")
        await s.open()
        yield s
        await s.close()
        return
    uri = os.environ.get("MONGODB_URI")
    if not uri:
        pytest.skip("MONGODB_URI is not set: no MongoDB server to run the conformance suite on")
    from gateway.records.stores.mongo import MongoStore

    database = f"modelgw_test_{uuid.uuid4().hex[:8]}"
    mongo = MongoStore(uri, database)
    await mongo.open()
    yield mongo
    await mongo._client.drop_database(database)
    await mongo.close()


def record(
    i: int, model: str = "m", version: str = "1", ts: float | None = None
) -> InferenceRecord:
    return InferenceRecord(
        id=f"r{i}-{model}-{version}",
        model=model,
        version=version,
        ts=ts if ts is not None else float(i),
        content_type="application/json",
        inputs=f'{{"dataframe_records": [{{"a": {i}}}]}}',
        predictions=f'{{"predictions": [{i}]}}',
    )


async def test_records_come_back_in_time_order_within_a_range(store: Store) -> None:
    await store.insert_records([record(3), record(1), record(2), record(9, version="2")])
    got = [r async for r in store.iter_records("m", "1")]
    assert [r.id for r in got] == ["r1-m-1", "r2-m-1", "r3-m-1"]
    ranged = [r.ts async for r in store.iter_records("m", "1", start=2.0, end=3.0)]
    assert ranged == [2.0]
    assert await store.count_records("m", "1") == 3
    assert await store.count_records("m", "2") == 1


async def test_writes_are_idempotent_by_id(store: Store) -> None:
    await store.insert_records([record(1), record(2)])
    await store.insert_records([record(2), record(3)])  # a retried batch overlaps
    assert await store.count_records("m", "1") == 3


async def test_a_batch_of_several_hundred_is_written_whole_and_once(store: Store) -> None:
    # More rows than one multi-row INSERT of the SQLite store takes (90), and not a
    # multiple of it, with an overlap of an earlier batch and a duplicate inside.
    await store.insert_records([record(i) for i in range(0, 100)])
    batch = [record(i) for i in range(50, 301)] + [record(300)]
    await store.insert_records(batch)
    got = [r async for r in store.iter_records("m", "1")]
    assert [r.id for r in got] == [f"r{i}-m-1" for i in range(301)]
    last = got[-1].predictions
    assert (json.loads(last) if isinstance(last, str) else last) == {"predictions": [300]}


async def test_record_bodies_survive(store: Store) -> None:
    await store.insert_records([record(7)])
    [r] = [r async for r in store.iter_records("m", "1")]
    inputs = r.inputs if isinstance(r.inputs, dict) else __import__("json").loads(r.inputs)
    assert inputs == {"dataframe_records": [{"a": 7}]}


async def test_baselines_are_replaced(store: Store) -> None:
    assert await store.get_baseline("m", "1") is None
    await store.set_baseline("m", "1", Baseline({"accuracy": 0.9}, "run a", 1.0))
    await store.set_baseline("m", "1", Baseline({"accuracy": 0.8, "f1": 0.7}, "run b", 2.0))
    baseline = await store.get_baseline("m", "1")
    assert baseline is not None and baseline.metrics == {"accuracy": 0.8, "f1": 0.7}
    assert baseline.source == "run b"


async def test_snapshots_in_order_and_by_name(store: Store) -> None:
    await store.add_snapshot("m", "1", MetricsSnapshot("b.json", 20.0, {"accuracy": 0.5}, {}, 4))
    await store.add_snapshot("m", "1", MetricsSnapshot("a.json", 10.0, {"accuracy": 0.9},
                                                      {"auc": "needs scores"}, 3))  # fmt: skip
    snapshots = await store.list_snapshots("m", "1")
    assert [s.name for s in snapshots] == ["a.json", "b.json"]
    assert snapshots[0].skipped == {"auc": "needs scores"} and snapshots[0].n_samples == 3
    found = await store.get_snapshot("m", "1", "b.json")
    assert found is not None and found.metrics == {"accuracy": 0.5}
    assert await store.get_snapshot("m", "1", "zzz.json") is None
    assert await store.list_snapshots("m", "2") == []


async def test_reference_data_is_replaced(store: Store) -> None:
    assert await store.get_reference("m", "1") is None
    await store.set_reference("m", "1", b"a,b\n1,2\n")
    await store.set_reference("m", "1", b"a,b\n3,4\n")
    assert await store.get_reference("m", "1") == b"a,b\n3,4\n"


async def test_logged_floats_come_back_exactly(store: Store) -> None:
    exact = [-0.044641636506989144, 0.05068011873981862, 0.1 + 0.2, 5e-324, -0.0]
    body = json.dumps({"dataframe_split": {"columns": list("abcde"), "data": [exact]}})
    await store.insert_records([InferenceRecord("f1", "m", "1", 1.0, "application/json",
                                                body, '{"predictions": [0.30000000000000004]}')])  # fmt: skip
    [r] = [r async for r in store.iter_records("m", "1")]
    [row] = list(record_rows(r))
    assert [repr(row[c]) for c in "abcde"] == [repr(v) for v in exact]
    assert repr(row["prediction"]) == "0.30000000000000004"


async def test_has_records(store: Store) -> None:
    assert await store.has_records("m", "1") is False
    await store.insert_records([record(1, version="2")])
    assert await store.has_records("m", "1") is False
    assert await store.has_records("m", "2") is True


def call(i: int, request_id: str, rows: int = 1, ts: float | None = None) -> InferenceRecord:
    return InferenceRecord(
        id=f"c{i}", model="m", version="1", ts=ts if ts is not None else float(i),
        content_type="application/json",
        inputs=json.dumps({"instances": [[r] for r in range(rows)]}),
        predictions=json.dumps({"predictions": list(range(rows))}), request_id=request_id,
    )  # fmt: skip


async def test_ground_truth_is_set_once_by_record_and_found_by_request_id(store: Store) -> None:
    await store.insert_records([call(1, "a"), call(2, "b", rows=2), call(3, "c")])
    found = await store.find_calls("m", "1", ["b", "a", "zz", "a"])
    assert sorted(r.request_id or "" for r in found) == ["a", "b"]
    assert all(r.ground_truth is None for r in found)
    assert await store.find_calls("m", "2", ["a"]) == []

    assert await store.label_records([("c1", [1]), ("c2", [0, 1])], at=50.0) == {"c1", "c2"}
    # A second label for the same call is refused: the first one stays.
    assert await store.label_records([("c1", [0]), ("c3", ["x"])], at=60.0) == {"c3"}
    labelled = [r async for r in store.iter_records("m", "1", labelled=True)]
    assert [(r.id, r.ground_truth, r.labelled_at) for r in labelled] == [
        ("c1", [1], 50.0), ("c2", [0, 1], 50.0), ("c3", ["x"], 60.0)]  # fmt: skip
    assert [r.request_id for r in labelled] == ["a", "b", "c"]
    exported = [row for r in labelled for row in record_rows(r)]
    assert [row["ground_truth"] for row in exported] == [1, 0, 1, "x"]


async def test_labelled_iteration_respects_the_period(store: Store) -> None:
    await store.insert_records([call(1, "a", ts=10.0), call(2, "b", ts=20.0), call(3, "c")])
    await store.label_records([("c1", [1]), ("c2", [1])], at=99.0)
    ranged = [r.id async for r in store.iter_records("m", "1", 15.0, 25.0, labelled=True)]
    assert ranged == ["c2"]


async def test_purge_deletes_exactly_the_older_records(store: Store) -> None:
    from gateway.records.stores import sqlite

    many = sqlite.PURGE_BATCH + 7  # more than one batch
    old = [record(i, ts=1000.0 + i / many) for i in range(many)]
    new = [record(many + i, ts=2000.0 + i) for i in range(5)]
    await store.insert_records(old + new)
    assert await store.purge_before(2000.0) == many
    left = [r.id async for r in store.iter_records("m", "1")]
    assert left == [r.id for r in new]
    assert await store.purge_before(2000.0) == 0


async def test_the_arm_of_a_record_survives(store: Store) -> None:
    shadow = record(1)
    shadow.arm = "shadow"
    await store.insert_records([shadow, record(2)])
    got = {r.id: r.arm async for r in store.iter_records("m", "1")}
    assert got == {"r1-m-1": "shadow", "r2-m-1": "primary"}


async def test_an_inference_db_from_before_ground_truth_is_migrated_in_place(
    tmp_path: Path,
) -> None:
    """Files written by earlier releases gain the new columns; their rows stay as they were."""
    import sqlite3

    from gateway.records.stores.sqlite import SQLiteStore

    path = tmp_path / "inference.db"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE inference_log (id TEXT PRIMARY KEY, model TEXT NOT NULL,"
            " version TEXT NOT NULL, ts REAL NOT NULL, content_type TEXT NOT NULL,"
            " inputs TEXT, predictions TEXT)"
        )
        db.execute("INSERT INTO inference_log VALUES ('old', 'm', '1', 5.0, 'application/json',"
                   " '{\"instances\": [[1]]}', '{\"predictions\": [7]}')")  # fmt: skip
    db.close()
    store = SQLiteStore(path)
    await store.open()
    try:
        [old] = [r async for r in store.iter_records("m", "1")]
        assert old.id == "old" and old.request_id is None and old.ground_truth is None
        assert old.arm == "primary"  # every call logged before routes answered its caller
        await store.insert_records([call(1, "new-id")])
        assert [r.id for r in await store.find_calls("m", "1", ["new-id"])] == ["c1"]
        assert await store.label_records([("old", [7])], at=9.0) == {"old"}
    finally:
        await store.close()
    again = SQLiteStore(path)  # a second open finds nothing left to migrate
    await again.open()
    await again.close()
