"""The MongoDB store at the wire level, against mockupdb (MongoDB's wire-protocol test server).

These check the commands the driver sends: one batched insert, a filtered and
sorted find, the index creation. The conformance suite checks behaviour
against a real server whenever MONGODB_URI is set.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from mockupdb import MockupDB
from pymongo.errors import BulkWriteError

from gateway.records.rows import record_rows
from gateway.records.stores.base import InferenceRecord
from gateway.records.stores.mongo import MongoStore


@pytest.fixture
async def server() -> AsyncIterator[MockupDB]:
    mock = MockupDB(auto_ismaster={"maxWireVersion": 21, "minWireVersion": 0})
    mock.run()
    yield mock
    mock.stop()


@pytest.fixture
async def store(server: MockupDB) -> AsyncIterator[MongoStore]:
    s = MongoStore(server.uri, "mlflow", server_selection_timeout_ms=3000)
    yield s
    await s.close()


async def receive(server: MockupDB) -> Any:
    return await asyncio.to_thread(server.receives, timeout=10)


def records(n: int) -> list[InferenceRecord]:
    return [
        InferenceRecord(f"id{i}", "wine", "1", 100.0 + i, "application/json",
                        '{"instances": [[1.5, 2]]}', '{"predictions": [1]}')
        for i in range(n)
    ]  # fmt: skip


async def test_a_batch_is_one_unordered_insert_of_parsed_documents(server, store) -> None:
    task = asyncio.create_task(store.insert_records(records(3)))
    request = await receive(server)
    assert request.command_name == "insert"
    assert request["insert"] == "inference_log" and request["ordered"] is False
    docs = request.docs[0]["documents"]
    assert [d["_id"] for d in docs] == ["id0", "id1", "id2"]
    assert docs[0]["inputs"] == {"instances": [[1.5, 2]]}  # stored parsed, not as text
    assert docs[0]["predictions"] == {"predictions": [1]}
    request.ok(n=3)
    await task


async def test_duplicates_from_a_retried_batch_are_success(server, store) -> None:
    task = asyncio.create_task(store.insert_records(records(2)))
    (await receive(server)).ok(n=1, writeErrors=[{"index": 0, "code": 11000, "errmsg": "dup"}])
    await task


async def test_other_write_errors_raise(server, store) -> None:
    task = asyncio.create_task(store.insert_records(records(2)))
    (await receive(server)).ok(n=1, writeErrors=[{"index": 0, "code": 2, "errmsg": "bad"}])
    with pytest.raises(BulkWriteError):
        await task


async def test_export_is_a_filtered_sorted_find(server, store) -> None:
    async def collect() -> list[InferenceRecord]:
        return [r async for r in store.iter_records("wine", "1", start=10.0, end=20.0)]

    task = asyncio.create_task(collect())
    request = await receive(server)
    assert request.command_name == "find"
    assert request["filter"] == {"model": "wine", "version": "1", "ts": {"$gte": 10.0, "$lt": 20.0}}
    assert request["sort"] == {"ts": 1}
    doc = {"_id": "a", "model": "wine", "version": "1", "ts": 12.0,
           "content_type": "application/json", "inputs": {"instances": [[1]]},
           "predictions": {"predictions": [0]}}  # fmt: skip
    request.reply({"cursor": {"id": 0, "ns": "mlflow.inference_log", "firstBatch": [doc]}, "ok": 1})
    [record] = await task
    assert record.id == "a" and record.ts == 12.0 and record.inputs == {"instances": [[1]]}
    assert record.arm == "primary"  # a document from before arms existed


async def test_open_creates_the_indexes(server, store) -> None:
    task = asyncio.create_task(store.open())
    first = await receive(server)
    assert first.command_name == "createIndexes"
    assert first["createIndexes"] == "inference_log"
    keys = [dict(index["key"]) for index in first["indexes"]]
    assert keys == [{"model": 1, "version": 1, "ts": 1},
                    {"model": 1, "version": 1, "request_id": 1}]  # fmt: skip
    first.ok()
    # No retention set: a TTL index left by an earlier setting is dropped (if any).
    ttl = await receive(server)
    assert ttl.command_name == "dropIndexes" and ttl["index"] == "logged_at_ttl"
    ttl.command_err(code=27, errmsg="index not found with name [logged_at_ttl]")
    second = await receive(server)
    assert second["createIndexes"] == "metric_snapshots"
    assert second["indexes"][0]["unique"] is True
    second.ok()
    await task


async def _open_with_retention(server: MockupDB, days: float, conflict: bool) -> Any:
    store = MongoStore(server.uri, "mlflow", server_selection_timeout_ms=3000,
                       retention_s=days * 86_400)  # fmt: skip
    task = asyncio.create_task(store.open())
    (await receive(server)).ok()  # the query indexes
    ttl = await receive(server)
    assert ttl.command_name == "createIndexes"
    [index] = ttl["indexes"]
    assert dict(index["key"]) == {"logged_at": 1} and index["name"] == "logged_at_ttl"
    assert index["expireAfterSeconds"] == int(days * 86_400)
    changed = None
    if conflict:
        ttl.command_err(code=85, errmsg="An equivalent index already exists with different options")
        changed = await receive(server)
        changed.ok()
    else:
        ttl.ok()
    (await receive(server)).ok()  # metric_snapshots
    await task
    await store.close()
    return changed


async def test_retention_is_a_ttl_index_on_the_logged_date(server) -> None:
    assert await _open_with_retention(server, 30, conflict=False) is None


async def test_a_changed_retention_changes_the_ttl_index_in_place(server) -> None:
    changed = await _open_with_retention(server, 7, conflict=True)
    assert changed.command_name == "collMod" and changed["collMod"] == "inference_log"
    assert dict(changed["index"]) == {"name": "logged_at_ttl", "expireAfterSeconds": 7 * 86_400}


async def test_documents_carry_the_request_id_and_a_date_for_the_ttl(server, store) -> None:
    from datetime import UTC, datetime

    record = InferenceRecord("d", "m", "1", 1_700_000_000.0, "application/json",
                             '{"instances": [[1]]}', '{"predictions": [1]}', request_id="rq-1")  # fmt: skip
    task = asyncio.create_task(store.insert_records([record]))
    request = await receive(server)
    [doc] = request.docs[0]["documents"]
    assert doc["request_id"] == "rq-1" and "ground_truth" not in doc
    assert doc["arm"] == "primary"
    logged = doc["logged_at"]
    assert logged.replace(tzinfo=UTC) == datetime.fromtimestamp(1_700_000_000.0, UTC)
    request.ok(n=1)
    await task


async def test_labels_are_conditional_updates_of_unlabelled_records(server, store) -> None:
    task = asyncio.create_task(store.label_records([("a", [1]), ("b", [0, 1])], at=5.0))
    request = await receive(server)
    assert request.command_name == "update"
    updates = request.docs[0]["updates"]
    assert [dict(u["q"]) for u in updates] == [{"_id": "a", "ground_truth": None},
                                              {"_id": "b", "ground_truth": None}]  # fmt: skip
    assert updates[1]["u"]["$set"]["ground_truth"] == [0, 1]
    request.ok(n=2, nModified=1)  # one was labelled meanwhile: ask which are ours
    check = await receive(server)
    assert check.command_name == "find" and dict(check["filter"])["_id"] == {"$in": ["a", "b"]}
    token = updates[0]["u"]["$set"]["feedback"]
    assert dict(check["filter"])["feedback"] == token
    check.reply({"cursor": {"id": 0, "ns": "mlflow.inference_log", "firstBatch": [{"_id": "b"}]},
                 "ok": 1})  # fmt: skip
    assert await task == {"b"}


async def test_find_calls_and_purge_are_one_command_each(server, store) -> None:
    task = asyncio.create_task(store.find_calls("m", "1", ["x", "y", "x"]))
    find = await receive(server)
    assert dict(find["filter"]) == {"model": "m", "version": "1",
                                    "request_id": {"$in": ["x", "y"]}}  # fmt: skip
    find.reply({"cursor": {"id": 0, "ns": "mlflow.inference_log", "firstBatch": []}, "ok": 1})
    assert await task == []
    purge = asyncio.create_task(store.purge_before(100.0))
    delete = await receive(server)
    assert delete.command_name == "delete"
    assert dict(delete.docs[0]["deletes"][0]["q"]) == {"ts": {"$lt": 100.0}}
    delete.ok(n=3)
    assert await purge == 3


async def test_redacted_fields_never_reach_the_documents(server, store, tmp_path) -> None:
    """Through the log writer, as the gateway writes: the insert carries no redacted value."""
    from gateway.records.privacy import Redactor
    from gateway.records.writer import InferenceLogger

    redactor = Redactor({"ssn": "drop", "email": "hash"}, b"k" * 32)
    log = InferenceLogger(store, tmp_path / "spool", flush_interval=0.01, redactor=redactor)
    await log.start()
    body = {
        "dataframe_split": {
            "columns": ["ssn", "email", "age"],
            "data": [["123-45-6789", "a@b.c", 41]],
        }
    }
    log.submit("m", "1", "application/json", json.dumps(body).encode(), b'{"predictions": [1]}',
               request_id="r-1")  # fmt: skip
    request = await receive(server)
    [doc] = request.docs[0]["documents"]
    assert doc["inputs"] == {"dataframe_split": {"columns": ["email", "age"],
                                                 "data": [[redactor.hash("a@b.c"), 41]]}}  # fmt: skip
    assert "123-45-6789" not in repr(doc) and "a@b.c" not in repr(doc)
    request.ok(n=1)
    for _ in range(1000):  # the reply is in before the writer stops
        if log.stats.written:
            break
        await asyncio.sleep(0.01)
    await log.close()


EXACT = [-0.044641636506989144, 0.05068011873981862, 0.1 + 0.2, 5e-324, -0.0]


async def test_floats_go_over_the_wire_exactly(server, store) -> None:
    body = json.dumps({"dataframe_split": {"columns": list("abcde"), "data": [EXACT]}})
    record = InferenceRecord("f", "m", "1", 1.0, "application/json", body,
                             '{"predictions": [0.30000000000000004]}')  # fmt: skip
    task = asyncio.create_task(store.insert_records([record]))
    request = await receive(server)
    [doc] = request.docs[0]["documents"]
    assert [repr(v) for v in doc["inputs"]["dataframe_split"]["data"][0]] == [
        repr(v) for v in EXACT
    ]
    assert repr(doc["predictions"]["predictions"][0]) == "0.30000000000000004"
    request.ok(n=1)
    await task

    async def collect() -> list[InferenceRecord]:
        return [r async for r in store.iter_records("m", "1")]

    task2 = asyncio.create_task(collect())
    find = await receive(server)
    find.reply({"cursor": {"id": 0, "ns": "mlflow.inference_log", "firstBatch": [doc]}, "ok": 1})
    [back] = await task2
    [row] = list(record_rows(back))
    assert [repr(row[c]) for c in "abcde"] == [repr(v) for v in EXACT]


async def test_an_integer_bson_cannot_hold_is_stored_as_text(server, store) -> None:
    """JSON integers have no size limit; BSON's stop at 64 bits. The body stays text."""
    body = '{"instances": [[123456789012345678901234567890, 1.5]]}'
    record = InferenceRecord("big", "m", "1", 1.0, "application/json", body, '{"predictions": [1]}')
    task = asyncio.create_task(store.insert_records([record]))
    request = await receive(server)
    [doc] = request.docs[0]["documents"]
    assert doc["inputs"] == body and doc["predictions"] == {"predictions": [1]}
    request.ok(n=1)
    await task


async def test_has_records_fetches_one_id(server, store) -> None:
    task = asyncio.create_task(store.has_records("m", "1"))
    request = await receive(server)
    assert request.command_name == "find"
    assert request["filter"] == {"model": "m", "version": "1"}
    assert request["limit"] == 1 and request["projection"] == {"_id": 1}
    request.reply({"cursor": {"id": 0, "ns": "mlflow.inference_log", "firstBatch": []}, "ok": 1})
    assert await task is False
