"""The embedded default store: one SQLite file in WAL mode, through aiosqlite.

Files from before ground truth (or the `arm` of a route) existed gain the columns
in place when opened: `ALTER TABLE ... ADD COLUMN` is cheap, old rows read NULL
(or the column's default, `primary` for `arm`) without a rewrite.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from gateway.records.stores.base import Baseline, InferenceRecord, MetricsSnapshot, Store

_SCHEMA = """
CREATE TABLE IF NOT EXISTS inference_log (
    id           TEXT PRIMARY KEY,
    model        TEXT NOT NULL,
    version      TEXT NOT NULL,
    ts           REAL NOT NULL,
    content_type TEXT NOT NULL,
    inputs       TEXT,
    predictions  TEXT,
    request_id   TEXT,
    ground_truth TEXT,
    labelled_at  REAL,
    arm          TEXT NOT NULL DEFAULT 'primary'
);
CREATE INDEX IF NOT EXISTS inference_log_model_ts ON inference_log (model, version, ts);
CREATE TABLE IF NOT EXISTS baselines (
    model TEXT NOT NULL, version TEXT NOT NULL,
    metrics TEXT NOT NULL, source TEXT NOT NULL, updated_at REAL NOT NULL,
    PRIMARY KEY (model, version)
);
CREATE TABLE IF NOT EXISTS metric_snapshots (
    model TEXT NOT NULL, version TEXT NOT NULL, name TEXT NOT NULL, ts REAL NOT NULL,
    metrics TEXT NOT NULL, skipped TEXT NOT NULL, n_samples INTEGER NOT NULL,
    PRIMARY KEY (model, version, name)
);
CREATE INDEX IF NOT EXISTS metric_snapshots_ts ON metric_snapshots (model, version, ts);
CREATE TABLE IF NOT EXISTS reference_data (
    model TEXT NOT NULL, version TEXT NOT NULL, csv BLOB NOT NULL, updated_at REAL NOT NULL,
    PRIMARY KEY (model, version)
);
"""


# Columns added since the first release, with their types: added to older files on open.
_ADDED_COLUMNS = {
    "request_id": "TEXT",
    "ground_truth": "TEXT",
    "labelled_at": "REAL",
    # Calls logged before routes had arms were all answers to callers.
    "arm": "TEXT NOT NULL DEFAULT 'primary'",
}
# Made after the migration, since they name added columns.
_INDEXES = """
CREATE INDEX IF NOT EXISTS inference_log_request ON inference_log (model, version, request_id);
CREATE INDEX IF NOT EXISTS inference_log_ts ON inference_log (ts);
"""
_RECORD_COLUMNS = (
    "id, model, version, ts, content_type, inputs, predictions, request_id, ground_truth,"
    " labelled_at, arm"
)
_COLUMNS = 11
# Rows per INSERT of the log writer: a multi-row statement costs about 40 % less per
# row than `executemany` (one VM run and one GIL release per statement, not per row);
# 90 x 11 values stay under 999, SQLite's bound-variable limit before 3.32.
_ROWS_PER_INSERT = 90


@functools.lru_cache(maxsize=_ROWS_PER_INSERT)
def _insert_sql(rows: int) -> str:
    marks = "(" + ", ".join("?" * _COLUMNS) + ")"
    return f"INSERT OR IGNORE INTO inference_log ({_RECORD_COLUMNS}) VALUES " + ", ".join(
        [marks] * rows
    )


# Rows per statement: far below SQLite's bound-variable limit, short enough that the
# log writer never waits long behind a purge or a labelling batch.
_CHUNK = 500
PURGE_BATCH = 5000


def _record(row: Sequence[Any]) -> InferenceRecord:
    truth = row[8]
    return InferenceRecord(
        id=row[0], model=row[1], version=row[2], ts=row[3], content_type=row[4],
        inputs=row[5], predictions=row[6], request_id=row[7],
        ground_truth=json.loads(truth) if truth is not None else None, labelled_at=row[9],
        arm=row[10],
    )  # fmt: skip


def _text(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value)


class SQLiteStore(Store):
    """Everything in one file under the data dir; no server to run."""

    transient_errors = (sqlite3.OperationalError, sqlite3.DatabaseError, OSError)

    def __init__(self, path: Path, busy_timeout_ms: int = 1000, fetch_size: int = 1000) -> None:
        self.path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._fetch_size = fetch_size
        self._db: aiosqlite.Connection | None = None
        # Python's sqlite3 opens transactions implicitly; writers must not share one.
        self._write_lock = asyncio.Lock()

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("store is not open")
        return self._db

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = await aiosqlite.connect(self.path)
        # A short busy timeout: a locked file makes a write fail fast and be retried
        # by the log writer, instead of parking a thread for long.
        await self._db.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute("PRAGMA synchronous=NORMAL")
        await self._db.executescript(_SCHEMA)
        await self._migrate()
        await self._db.executescript(_INDEXES)
        await self._db.commit()

    async def _migrate(self) -> None:
        async with self.db.execute("PRAGMA table_info(inference_log)") as cursor:
            present = {row[1] for row in await cursor.fetchall()}
        for column, kind in _ADDED_COLUMNS.items():
            if column not in present:
                await self.db.execute(f"ALTER TABLE inference_log ADD COLUMN {column} {kind}")

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def insert_records(self, records: Sequence[InferenceRecord]) -> None:
        values: list[object] = []
        for r in records:
            values += (r.id, r.model, r.version, r.ts, r.content_type, _text(r.inputs),
                       _text(r.predictions), r.request_id, _text(r.ground_truth), r.labelled_at,
                       r.arm)  # fmt: skip
        async with self._write_lock:
            await self._insert(values, len(records))

    async def _insert(self, values: list[object], n: int) -> None:
        """`n` rows of flat `values`, a few multi-row INSERTs in one transaction."""
        try:
            for i in range(0, n, _ROWS_PER_INSERT):
                rows = min(_ROWS_PER_INSERT, n - i)
                await self.db.execute(
                    _insert_sql(rows), values[i * _COLUMNS : (i + rows) * _COLUMNS]
                )
            await self.db.commit()
        except BaseException:
            await self.db.rollback()
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
        sql = f"SELECT {_RECORD_COLUMNS} FROM inference_log WHERE model = ? AND version = ?"
        args: list[object] = [model, version]
        if labelled:
            sql += " AND ground_truth IS NOT NULL"
        if start is not None:
            sql += " AND ts >= ?"
            args.append(start)
        if end is not None:
            sql += " AND ts < ?"
            args.append(end)
        sql += " ORDER BY ts"
        # A connection of its own: a long export neither waits behind the log
        # writer nor holds a read open on the writer's connection.
        async with aiosqlite.connect(self.path) as reader:
            async with reader.execute(sql, args) as cursor:
                while rows := await cursor.fetchmany(self._fetch_size):
                    for row in rows:
                        yield _record(row)

    async def find_calls(
        self, model: str, version: str, request_ids: Sequence[str]
    ) -> list[InferenceRecord]:
        found: list[InferenceRecord] = []
        unique = list(dict.fromkeys(request_ids))
        for i in range(0, len(unique), _CHUNK):
            chunk = unique[i : i + _CHUNK]
            marks = ", ".join("?" * len(chunk))
            async with self.db.execute(
                f"SELECT {_RECORD_COLUMNS} FROM inference_log"
                f" WHERE model = ? AND version = ? AND request_id IN ({marks}) ORDER BY ts",
                (model, version, *chunk),
            ) as cursor:
                found.extend(_record(row) for row in await cursor.fetchall())
        return found

    async def label_records(self, labels: Sequence[tuple[str, list[Any]]], at: float) -> set[str]:
        done: set[str] = set()
        for i in range(0, len(labels), _CHUNK):
            chunk = labels[i : i + _CHUNK]
            marks = ", ".join("?" * len(chunk))
            # Under the write lock this connection is the only writer, so the rows
            # still unlabelled now are exactly the rows the update below labels.
            async with self._write_lock:
                try:
                    async with self.db.execute(
                        f"SELECT id FROM inference_log WHERE id IN ({marks})"
                        " AND ground_truth IS NULL",
                        [record_id for record_id, _ in chunk],
                    ) as cursor:
                        open_ids = {row[0] for row in await cursor.fetchall()}
                    await self.db.executemany(
                        "UPDATE inference_log SET ground_truth = ?, labelled_at = ?"
                        " WHERE id = ? AND ground_truth IS NULL",
                        [(json.dumps(truth), at, record_id) for record_id, truth in chunk
                         if record_id in open_ids],
                    )  # fmt: skip
                    await self.db.commit()
                except BaseException:
                    await self.db.rollback()
                    raise
            done |= open_ids
        return done

    async def purge_before(self, cutoff: float) -> int:
        """Delete in batches, each its own short transaction: the log writer goes between."""
        deleted = 0
        while True:
            async with self._write_lock:
                try:
                    cursor = await self.db.execute(
                        "DELETE FROM inference_log WHERE rowid IN"
                        " (SELECT rowid FROM inference_log WHERE ts < ? LIMIT ?)",
                        (cutoff, PURGE_BATCH),
                    )
                    await self.db.commit()
                except BaseException:
                    await self.db.rollback()
                    raise
            deleted += cursor.rowcount
            if cursor.rowcount < PURGE_BATCH:
                return deleted
            await asyncio.sleep(0)

    async def count_records(self, model: str, version: str) -> int:
        async with self.db.execute(
            "SELECT COUNT(*) FROM inference_log WHERE model = ? AND version = ?", (model, version)
        ) as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def has_records(self, model: str, version: str) -> bool:
        async with self.db.execute(
            "SELECT 1 FROM inference_log WHERE model = ? AND version = ? LIMIT 1", (model, version)
        ) as cursor:
            return await cursor.fetchone() is not None

    async def _write(self, sql: str, args: tuple[object, ...]) -> None:
        async with self._write_lock:
            await self.db.execute(sql, args)
            await self.db.commit()

    async def set_baseline(self, model: str, version: str, baseline: Baseline) -> None:
        await self._write(
            "INSERT OR REPLACE INTO baselines (model, version, metrics, source, updated_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (model, version, json.dumps(baseline.metrics), baseline.source, baseline.updated_at),
        )

    async def get_baseline(self, model: str, version: str) -> Baseline | None:
        async with self.db.execute(
            "SELECT metrics, source, updated_at FROM baselines WHERE model = ? AND version = ?",
            (model, version),
        ) as cursor:
            row = await cursor.fetchone()
        return Baseline(json.loads(row[0]), row[1], row[2]) if row else None

    async def add_snapshot(self, model: str, version: str, snapshot: MetricsSnapshot) -> None:
        await self._write(
            "INSERT INTO metric_snapshots"
            " (model, version, name, ts, metrics, skipped, n_samples) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                model, version, snapshot.name, snapshot.ts, json.dumps(snapshot.metrics),
                json.dumps(snapshot.skipped), snapshot.n_samples,
            ),
        )  # fmt: skip

    async def list_snapshots(self, model: str, version: str) -> list[MetricsSnapshot]:
        async with self.db.execute(
            "SELECT name, ts, metrics, skipped, n_samples FROM metric_snapshots"
            " WHERE model = ? AND version = ? ORDER BY ts",
            (model, version),
        ) as cursor:
            rows = await cursor.fetchall()
        return [MetricsSnapshot(r[0], r[1], json.loads(r[2]), json.loads(r[3]), r[4]) for r in rows]

    async def set_reference(self, model: str, version: str, csv: bytes) -> None:
        await self._write(
            "INSERT OR REPLACE INTO reference_data (model, version, csv, updated_at)"
            " VALUES (?, ?, ?, ?)",
            (model, version, csv, time.time()),
        )

    async def get_reference(self, model: str, version: str) -> bytes | None:
        async with self.db.execute(
            "SELECT csv FROM reference_data WHERE model = ? AND version = ?", (model, version)
        ) as cursor:
            row = await cursor.fetchone()
        return bytes(row[0]) if row else None
