"""Spool files an earlier release left are replayed once at start, then gone.

Nothing writes the spool any more (the journal keeps every call); an upgrade that
finds spool files from a store outage must still deliver them.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from gateway.records.stores.base import InferenceRecord
from gateway.records.stores.sqlite import SQLiteStore
from gateway.records.writer import InferenceLogger
from tests.gateway.records.test_writer import eventually


def record(i: int) -> InferenceRecord:
    return InferenceRecord(
        id=f"r{i}", model="m", version="1", ts=1_700_000_000.0 + i,
        content_type="application/json", inputs=f'{{"instances": [[{i}]]}}', predictions="[1]",
    )  # fmt: skip


def write_spool(path: Path, records: list[InferenceRecord]) -> None:
    """A spool file as the earlier release wrote it: one record as JSON per line."""
    rows = [dataclasses.asdict(r) for r in records]
    for row in rows:
        del row["arm"]  # the earlier release's records had no arm
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


async def test_an_earlier_releases_spool_is_replayed_and_removed(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "inference.db")
    await store.open()
    spool = tmp_path / "spool"
    spool.mkdir()
    write_spool(spool / "spool-1.jsonl", [record(1), record(2)])
    write_spool(spool / "spool-2.jsonl", [record(3)])
    (spool / "spool-3.partial").write_text('{"id": "half')  # a spill cut short: never counted
    (spool / "spool-4.jsonl").write_text('{"not": "a record"}\n')
    log = InferenceLogger(store, tmp_path / "journal", flush_interval=0.01, legacy_spool=spool)
    await log.start()
    try:
        await eventually(lambda: log.stats.replayed == 3)
        await eventually(lambda: sorted(p.name for p in spool.iterdir()) == ["spool-4.damaged"])
        got = {r.id: r.arm async for r in store.iter_records("m", "1")}
        assert got == {"r1": "primary", "r2": "primary", "r3": "primary"}
    finally:
        await log.close()
        await store.close()
