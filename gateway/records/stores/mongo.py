"""The MongoDB store, through PyMongo's async API (`AsyncMongoClient`).

Imported only when `MONGODB_URI` is set, so PyMongo stays optional
(`pip install modelgw[mongodb]`). Inference records are documents: JSON bodies
are stored parsed, as the original did, so they can be queried in place.
Retention is MongoDB's own TTL index on `logged_at` (a date: TTL indexes read
no numbers), created, changed or dropped at start-up to match the setting.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING, AsyncMongoClient, IndexModel, UpdateOne
from pymongo.errors import BulkWriteError, OperationFailure, PyMongoError

from gateway.records.stores.base import Baseline, InferenceRecord, MetricsSnapshot, Store

logger = logging.getLogger(__name__)

_DUPLICATE_KEY = 11000
# createIndexes refuses an index whose options differ from the existing one's.
_INDEX_OPTIONS_CONFLICT = (85, 86)
TTL_INDEX = "logged_at_ttl"


class _BeyondInt64(ValueError):
    pass


def _int64(text: str) -> int:
    value = int(text)
    if not -(2**63) <= value < 2**63:
        raise _BeyondInt64(text)
    return value


def _parsed(value: Any) -> Any:
    """A JSON body as a document, or the text itself when BSON could not hold it exactly.

    Floats are kept as they parse (a Python float is a BSON double, bit for bit);
    an integer past 64 bits would fail the whole batch, so that body stays text.
    """
    if isinstance(value, str):
        try:
            return json.loads(value, parse_int=_int64)
        except ValueError:  # not JSON, or _BeyondInt64
            return value
    return value


def _documents(records: Sequence[InferenceRecord]) -> list[dict[str, Any]]:
    return [
        {
            "_id": r.id,
            "model": r.model,
            "version": r.version,
            "ts": r.ts,
            "content_type": r.content_type,
            "inputs": _parsed(r.inputs) if "json" in r.content_type else r.inputs,
            "predictions": _parsed(r.predictions),
            "request_id": r.request_id,
            "arm": r.arm,
            "logged_at": datetime.fromtimestamp(r.ts, UTC),
            **({"ground_truth": r.ground_truth, "labelled_at": r.labelled_at}
               if r.ground_truth is not None else {}),
        }
        for r in records
    ]  # fmt: skip


def _record(doc: dict[str, Any]) -> InferenceRecord:
    return InferenceRecord(
        id=str(doc["_id"]), model=doc["model"], version=doc["version"], ts=doc["ts"],
        content_type=doc.get("content_type", "application/json"),
        inputs=doc.get("inputs"), predictions=doc.get("predictions"),
        request_id=doc.get("request_id"), ground_truth=doc.get("ground_truth"),
        labelled_at=doc.get("labelled_at"),
        arm=doc.get("arm") or "primary",  # documents from before arms were all answers
    )  # fmt: skip


class MongoStore(Store):
    """Collections `inference_log`, `baselines`, `metric_snapshots`, `reference_data`."""

    transient_errors = (PyMongoError, OSError)

    def __init__(
        self,
        uri: str,
        database: str,
        *,
        server_selection_timeout_ms: int = 2000,
        client: AsyncMongoClient[dict[str, Any]] | None = None,
        retention_s: float | None = None,
    ) -> None:
        self.retention_s = retention_s
        self._client: AsyncMongoClient[dict[str, Any]] = client or AsyncMongoClient(
            uri, serverSelectionTimeoutMS=server_selection_timeout_ms, tz_aware=True
        )
        self._db = self._client[database]
        self.log = self._db["inference_log"]
        self.baselines = self._db["baselines"]
        self.snapshots = self._db["metric_snapshots"]
        self.references = self._db["reference_data"]

    async def open(self) -> None:
        # Index creation needs the server; if it is down now, writes retry later
        # and the indexes are made on the next start.
        try:
            await self.log.create_indexes(
                [
                    IndexModel(
                        [("model", ASCENDING), ("version", ASCENDING), ("ts", ASCENDING)],
                        name="model_version_ts",
                    ),
                    IndexModel(
                        [("model", ASCENDING), ("version", ASCENDING), ("request_id", ASCENDING)],
                        name="model_version_request_id",
                    ),
                ]
            )
            await self._retention_index()
            await self.snapshots.create_index(
                [("model", ASCENDING), ("version", ASCENDING), ("name", ASCENDING)],
                name="model_version_name",
                unique=True,
            )
        except PyMongoError:
            logger.warning("MongoDB is unreachable at start-up; records are kept and retried")

    async def _retention_index(self) -> None:
        """The TTL index as the setting says: made, its expiry changed, or dropped."""
        if not self.retention_s:
            try:
                await self.log.drop_index(TTL_INDEX)
            except OperationFailure:  # there was none
                pass
            return
        seconds = max(int(self.retention_s), 1)
        try:
            await self.log.create_index(
                [("logged_at", ASCENDING)], name=TTL_INDEX, expireAfterSeconds=seconds
            )
        except OperationFailure as exc:
            if exc.code not in _INDEX_OPTIONS_CONFLICT:
                raise
            await self._db.command(
                "collMod", self.log.name, index={"name": TTL_INDEX, "expireAfterSeconds": seconds}
            )

    async def close(self) -> None:
        await self._client.close()

    async def insert_records(self, records: Sequence[InferenceRecord]) -> None:
        docs = (
            await asyncio.to_thread(_documents, records)
            if len(records) > 64
            else _documents(records)
        )
        try:
            await self.log.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            # A retried batch may hit rows that already arrived: that is success.
            errors = exc.details.get("writeErrors", [])
            if any(e.get("code") != _DUPLICATE_KEY for e in errors) or exc.details.get(
                "writeConcernErrors"
            ):
                raise

    async def iter_records(
        self,
        model: str,
        version: str,
        start: float | None = None,
        end: float | None = None,
        *,
        labelled: bool = False,
    ) -> AsyncIterator[InferenceRecord]:
        query: dict[str, Any] = {"model": model, "version": version}
        if labelled:
            query["ground_truth"] = {"$ne": None}
        if start is not None or end is not None:
            query["ts"] = {}
            if start is not None:
                query["ts"]["$gte"] = start
            if end is not None:
                query["ts"]["$lt"] = end
        cursor = self.log.find(query, sort=[("ts", ASCENDING)], batch_size=1000)
        async for doc in cursor:
            yield _record(doc)

    async def find_calls(
        self, model: str, version: str, request_ids: Sequence[str]
    ) -> list[InferenceRecord]:
        cursor = self.log.find(
            {"model": model, "version": version,
             "request_id": {"$in": list(dict.fromkeys(request_ids))}},
            sort=[("ts", ASCENDING)],
        )  # fmt: skip
        return [_record(doc) async for doc in cursor]

    async def label_records(self, labels: Sequence[tuple[str, list[Any]]], at: float) -> set[str]:
        if not labels:
            return set()
        # Each update matches only a record without ground truth; the token then tells
        # exactly which records this call labelled, whatever ran at the same time.
        token = uuid.uuid4().hex
        result = await self.log.bulk_write(
            [UpdateOne({"_id": record_id, "ground_truth": None},
                       {"$set": {"ground_truth": truth, "labelled_at": at, "feedback": token}})
             for record_id, truth in labels],
            ordered=False,
        )  # fmt: skip
        ids = [record_id for record_id, _ in labels]
        if result.modified_count == len(set(ids)):
            return set(ids)
        cursor = self.log.find({"_id": {"$in": ids}, "feedback": token}, projection={"_id": 1})
        return {str(doc["_id"]) async for doc in cursor}

    async def purge_before(self, cutoff: float) -> int:
        """Records older than the TTL index (or written before it existed), now."""
        result = await self.log.delete_many({"ts": {"$lt": cutoff}})
        return int(result.deleted_count)

    async def count_records(self, model: str, version: str) -> int:
        return await self.log.count_documents({"model": model, "version": version})

    async def has_records(self, model: str, version: str) -> bool:
        found = await self.log.find_one({"model": model, "version": version}, projection={"_id": 1})
        return found is not None

    async def set_baseline(self, model: str, version: str, baseline: Baseline) -> None:
        await self.baselines.replace_one(
            {"_id": f"{model}/{version}"},
            {"model": model, "version": version, "metrics": baseline.metrics,
             "source": baseline.source, "updated_at": baseline.updated_at},
            upsert=True,
        )  # fmt: skip

    async def get_baseline(self, model: str, version: str) -> Baseline | None:
        doc = await self.baselines.find_one({"_id": f"{model}/{version}"})
        return Baseline(doc["metrics"], doc["source"], doc["updated_at"]) if doc else None

    async def add_snapshot(self, model: str, version: str, snapshot: MetricsSnapshot) -> None:
        await self.snapshots.insert_one(
            {"model": model, "version": version, "name": snapshot.name, "ts": snapshot.ts,
             "metrics": snapshot.metrics, "skipped": snapshot.skipped,
             "n_samples": snapshot.n_samples}
        )  # fmt: skip

    async def list_snapshots(self, model: str, version: str) -> list[MetricsSnapshot]:
        cursor = self.snapshots.find({"model": model, "version": version}, sort=[("ts", 1)])
        return [
            MetricsSnapshot(d["name"], d["ts"], d["metrics"], d.get("skipped", {}),
                            d.get("n_samples", 0))
            async for d in cursor
        ]  # fmt: skip

    async def set_reference(self, model: str, version: str, csv: bytes) -> None:
        await self.references.replace_one(
            {"_id": f"{model}/{version}"},
            {"model": model, "version": version, "csv": csv, "updated_at": time.time()},
            upsert=True,
        )

    async def get_reference(self, model: str, version: str) -> bytes | None:
        doc = await self.references.find_one({"_id": f"{model}/{version}"})
        return bytes(doc["csv"]) if doc else None
