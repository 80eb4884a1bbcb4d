"""The log writer against a store that fails on demand: journal, retry, replay, nothing lost."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from gateway.records.privacy import Redactor, sampled_in
from gateway.records.stores.base import Baseline, InferenceRecord, MetricsSnapshot, Store
from gateway.records.writer import InferenceLogger


class FlakyStore(Store):
    """An in-memory store whose writes raise OSError while `down` is set."""

    def __init__(self) -> None:
        self.rows: dict[str, InferenceRecord] = {}
        self.down = False
        self.batches: list[int] = []

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def insert_records(self, records: Sequence[InferenceRecord]) -> None:
        await asyncio.sleep(0)
        if self.down:
            raise OSError("store is down")
        self.batches.append(len(records))
        for r in records:
            self.rows.setdefault(r.id, r)

    async def iter_records(
        self, model, version, start=None, end=None, *, labelled=False
    ) -> AsyncIterator[InferenceRecord]:  # type: ignore[no-untyped-def]
        for r in sorted(self.rows.values(), key=lambda r: r.ts):
            yield r

    async def find_calls(self, model, version, request_ids) -> list[InferenceRecord]:  # type: ignore[no-untyped-def]
        return [r for r in self.rows.values() if r.request_id in set(request_ids)]

    async def label_records(self, labels, at) -> set[str]:  # type: ignore[no-untyped-def]
        return set()

    async def purge_before(self, cutoff: float) -> int:
        return 0

    async def count_records(self, model: str, version: str) -> int:
        return len(self.rows)

    async def set_baseline(self, model: str, version: str, baseline: Baseline) -> None: ...

    async def get_baseline(self, model: str, version: str) -> Baseline | None:
        return None

    async def add_snapshot(self, model: str, version: str, snapshot: MetricsSnapshot) -> None: ...

    async def list_snapshots(self, model: str, version: str) -> list[MetricsSnapshot]:
        return []

    async def set_reference(self, model: str, version: str, csv: bytes) -> None: ...

    async def get_reference(self, model: str, version: str) -> bytes | None:
        return None


async def eventually(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def submit(log: InferenceLogger, n: int, offset: int = 0) -> None:
    for i in range(offset, offset + n):
        log.submit(
            "m",
            "1",
            "application/json",
            b'{"instances": [[%d]]}' % i,
            b'{"predictions": [%d]}' % i,
            request_id=f"call-{i}",
        )


def segments(journal: Path) -> list[Path]:
    return sorted(journal.glob("seg-*.log"))


async def test_records_are_written_in_batches(tmp_path: Path) -> None:
    store = FlakyStore()
    log = InferenceLogger(store, tmp_path / "journal", batch_size=50, flush_interval=0.01)
    await log.start()
    submit(log, 120)
    await eventually(lambda: len(store.rows) == 120)
    assert max(store.batches) == 50 and len(store.batches) <= 4
    await log.close()
    assert log.stats.written == 120 and log.stats.journaled == 120 and log.stats.lost == 0
    assert segments(tmp_path / "journal") == []  # everything stored: nothing kept


async def test_an_outage_keeps_memory_bounded_and_replays_everything_once(tmp_path: Path) -> None:
    store = FlakyStore()
    store.down = True
    journal = tmp_path / "journal"
    log = InferenceLogger(store, journal, batch_size=10, flush_interval=0.01, max_pending=15,
                          max_backoff=0.05, segment_bytes=2048)  # fmt: skip
    await log.start()
    deepest = 0
    for burst in range(20):
        submit(log, 10, offset=burst * 10)
        deepest = max(deepest, log.depth)
        await asyncio.sleep(0)
    await eventually(lambda: log.stats.retried > 0)
    assert not log.stats.store_up
    # 200 calls journaled; memory holds at most max_pending calls and one failed batch.
    assert log.stats.journaled == 200 and deepest <= 15 + 10 and log.depth <= 15 + 10
    assert log.stats.spooled >= 200 - 15 - 10  # the rest wait on disk only
    assert len(segments(journal)) > 2  # rotated by size while the store was away
    store.down = False
    await eventually(lambda: len(store.rows) == 200)
    await eventually(lambda: segments(journal) == [])  # each removed once stored
    await log.close()
    assert log.stats.lost == 0 and log.stats.replayed == log.stats.spooled
    assert sorted(r.request_id for r in store.rows.values()) == sorted(
        f"call-{i}" for i in range(200)
    )


async def test_calls_left_by_a_killed_process_are_replayed_at_start(tmp_path: Path) -> None:
    store = FlakyStore()
    store.down = True
    journal = tmp_path / "journal"
    dead = InferenceLogger(store, journal, flush_interval=0.01, max_backoff=0.05)
    await dead.start()
    submit(dead, 7)
    await eventually(lambda: dead.stats.retried > 0)
    # What kill -9 leaves: the tasks stop and nothing is flushed or closed.
    for task in (dead._task, dead.syncer._task):
        assert task is not None
        task.cancel()
    assert segments(journal)

    store.down = False
    again = InferenceLogger(store, journal, flush_interval=0.01)
    await again.start()
    await eventually(lambda: len(store.rows) == 7)
    await eventually(lambda: segments(journal) == [])
    await again.close()
    assert again.stats.replayed == 7 and again.stats.lost == 0
    assert {r.request_id for r in store.rows.values()} == {f"call-{i}" for i in range(7)}


async def test_shutdown_with_the_store_down_keeps_the_journal_for_the_next_start(
    tmp_path: Path,
) -> None:
    store = FlakyStore()
    store.down = True
    log = InferenceLogger(store, tmp_path / "journal", flush_interval=0.01, max_backoff=0.05)
    await log.start()
    submit(log, 7)
    await log.close(timeout=0.5)
    assert store.rows == {} and log.stats.lost == 0 and segments(tmp_path / "journal")

    store.down = False
    again = InferenceLogger(store, tmp_path / "journal", flush_interval=0.01)
    await again.start()
    await eventually(lambda: len(store.rows) == 7)
    await again.close()
    assert segments(tmp_path / "journal") == []


async def test_a_journal_that_cannot_be_written_keeps_calls_in_memory_then_counts_lost(
    tmp_path: Path,
) -> None:
    store = FlakyStore()
    store.down = True
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the journal directory should be")
    log = InferenceLogger(store, blocker, flush_interval=0.01, max_pending=3, max_backoff=0.05)
    await log.start()  # the journal cannot open; calls still come in
    submit(log, 5)  # never raises: 3 kept in memory, 2 past the bound lost
    assert log.stats.unjournaled == 5 and log.stats.journaled == 0
    assert log.depth == 3 and log.stats.lost == 2
    store.down = False
    await eventually(lambda: len(store.rows) == 3)
    await log.close()
    assert log.stats.lost == 2


async def test_submit_never_blocks_while_the_store_hangs(tmp_path: Path) -> None:
    class HangingStore(FlakyStore):
        async def insert_records(self, records: Sequence[InferenceRecord]) -> None:
            await asyncio.sleep(3600)

    log = InferenceLogger(HangingStore(), tmp_path / "journal", flush_interval=0.01)
    await log.start()
    submit(log, 1000)  # returns at once: nothing here awaits the store
    assert log.depth >= 999 and log.stats.journaled == 1000
    await log.close(timeout=0.2)
    assert segments(tmp_path / "journal")  # all of it kept for the next start


async def test_a_store_slower_than_traffic_keeps_memory_bounded(tmp_path: Path) -> None:
    class SlowStore(FlakyStore):
        async def insert_records(self, records: Sequence[InferenceRecord]) -> None:
            await asyncio.sleep(0.02)
            await super().insert_records(records)

    store = SlowStore()
    log = InferenceLogger(
        store, tmp_path / "journal", batch_size=5, flush_interval=0.01, max_pending=20
    )
    await log.start()
    deepest = 0
    for burst in range(10):
        # Six times what one write takes arrives per write. Pacing the bursts by the
        # store's writes, not by the clock, keeps the bound free of thread timing.
        writes = len(store.batches)
        submit(log, 30, offset=burst * 30)
        deepest = max(deepest, log.depth)
        await eventually(lambda writes=writes: len(store.batches) > writes)
    # Bounded by max_pending and one batch, not by the traffic.
    assert deepest <= 20 + 5
    await eventually(lambda: len(store.rows) == 300)
    await log.close()
    assert log.stats.spooled > 0 and log.stats.lost == 0


async def test_bodies_come_back_from_the_journal_byte_for_byte(tmp_path: Path) -> None:
    exact = [-0.044641636506989144, 0.1 + 0.2, 5e-324, -0.0]
    body = json.dumps({"inputs": exact, "name": "é ✓"}).encode()
    store = FlakyStore()
    store.down = True
    log = InferenceLogger(store, tmp_path / "journal", flush_interval=0.01, max_pending=1,
                          max_backoff=0.05)  # fmt: skip
    await log.start()
    log.submit("mödel", "1", "application/json", body, b'{"predictions": [1]}', request_id="a")
    log.submit("mödel", "1", "text/csv", b"x\n1\n", None, arm="shadow")  # read back from disk
    assert log.stats.spooled == 1
    store.down = False
    await eventually(lambda: len(store.rows) == 2)
    await log.close()
    first, second = sorted(store.rows.values(), key=lambda r: r.ts)
    assert first.inputs == body.decode() and first.model == "mödel" and first.arm == "primary"
    assert [repr(v) for v in json.loads(first.inputs)["inputs"]] == [repr(v) for v in exact]
    assert (second.inputs, second.predictions, second.request_id, second.arm) == (
        "x\n1\n", None, None, "shadow")  # fmt: skip
    assert len(first.id) == 32 and first.id != second.id


async def test_sampling_keeps_the_calls_whose_ids_hash_in(tmp_path: Path) -> None:
    store = FlakyStore()
    log = InferenceLogger(store, tmp_path / "journal", flush_interval=0.01, sample=0.3)
    await log.start()
    ids = [f"call-{i}" for i in range(400)]
    for rid in ids:
        log.submit("m", "1", "application/json", b'{"instances": [[1]]}', b"[1]", request_id=rid)
    kept = {rid for rid in ids if sampled_in(rid, 0.3)}
    await eventually(lambda: len(store.rows) == len(kept))
    await log.close()
    assert {r.request_id for r in store.rows.values()} == kept
    assert log.stats.sampled_out == len(ids) - len(kept)
    assert log.stats.journaled == len(kept)  # a call sampled out never touches the disk
    assert 0.2 < len(kept) / len(ids) < 0.4  # a fraction near 0.3, the same on every run


async def test_redaction_happens_before_the_store_even_for_replayed_calls(tmp_path: Path) -> None:
    store = FlakyStore()
    store.down = True
    redactor = Redactor({"ssn": "drop", "email": "hash"}, b"k" * 32)
    log = InferenceLogger(store, tmp_path / "journal", flush_interval=0.01, max_pending=1,
                          max_backoff=0.05, redactor=redactor)  # fmt: skip
    await log.start()
    body = json.dumps({"dataframe_records": [{"ssn": "123-45-6789", "email": "a@b.c", "x": 1}]})
    log.submit("m", "1", "application/json", body.encode(), b"[1]", request_id="r1")
    log.submit("m", "1", "application/json", body.encode(), b"[1]", request_id="r2")
    assert log.stats.spooled == 1  # r2 is read back from the journal
    store.down = False
    await eventually(lambda: len(store.rows) == 2)
    await log.close()
    for record in store.rows.values():
        assert json.loads(record.inputs) == {
            "dataframe_records": [{"email": redactor.hash("a@b.c"), "x": 1}]
        }
