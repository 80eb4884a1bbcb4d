"""The log writer against a store that fails on demand: retry, spool, replay, nothing lost."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from gateway.records.privacy import Redactor, sampled_in
from gateway.records.spool import Spool
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
            self.rows[r.id] = r

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
            "m", "1", "application/json", b'{"instances": [[%d]]}' % i, b'{"predictions": [%d]}' % i
        )


async def test_records_are_written_in_batches(tmp_path: Path) -> None:
    store = FlakyStore()
    log = InferenceLogger(store, tmp_path / "spool", batch_size=50, flush_interval=0.01)
    log.start()
    submit(log, 120)
    await eventually(lambda: len(store.rows) == 120)
    assert max(store.batches) == 50 and len(store.batches) <= 4
    await log.close()
    assert log.stats.written == 120 and log.stats.lost == 0


async def test_an_outage_spools_and_replays_everything_once(tmp_path: Path) -> None:
    store = FlakyStore()
    store.down = True
    log = InferenceLogger(store, tmp_path / "spool", batch_size=10, flush_interval=0.01,
                          max_pending=15, max_backoff=0.05)  # fmt: skip
    log.start()
    submit(log, 40)
    await eventually(lambda: log.stats.spooled > 0)
    assert log.stats.retried > 0 and not log.stats.store_up
    assert list((tmp_path / "spool").glob("spool-*.jsonl"))
    submit(log, 10, offset=40)
    store.down = False
    await eventually(lambda: len(store.rows) == 50)
    await eventually(lambda: not list((tmp_path / "spool").glob("spool-*.jsonl")))
    await log.close()
    assert log.stats.lost == 0 and log.stats.replayed > 0
    bodies = sorted(r.inputs for r in store.rows.values())
    assert len(set(bodies)) == 50


async def test_shutdown_with_the_store_down_spools_and_the_next_start_replays(
    tmp_path: Path,
) -> None:
    store = FlakyStore()
    store.down = True
    log = InferenceLogger(store, tmp_path / "spool", flush_interval=0.01, max_backoff=0.05)
    log.start()
    submit(log, 7)
    await log.close(timeout=0.5)
    assert log.stats.spooled == 7 and store.rows == {}

    store.down = False
    again = InferenceLogger(store, tmp_path / "spool", flush_interval=0.01)
    again.start()
    await eventually(lambda: len(store.rows) == 7)
    await again.close()


async def test_a_failed_spool_write_is_counted_as_lost(tmp_path: Path) -> None:
    store = FlakyStore()
    store.down = True
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the spool directory should be")
    log = InferenceLogger(store, blocker, flush_interval=0.01, max_pending=3, max_backoff=0.05)
    log.start()
    submit(log, 5)
    await eventually(lambda: log.stats.lost > 0)
    await log.close(timeout=0.2)
    assert log.stats.lost == 5 and log.stats.spooled == 0


async def test_submit_never_blocks_while_the_store_hangs(tmp_path: Path) -> None:
    class HangingStore(FlakyStore):
        async def insert_records(self, records: Sequence[InferenceRecord]) -> None:
            await asyncio.sleep(3600)

    log = InferenceLogger(HangingStore(), tmp_path / "spool", flush_interval=0.01)
    log.start()
    submit(log, 1000)  # returns at once: nothing here awaits the store
    assert log.depth >= 999
    log._task.cancel()  # type: ignore[union-attr]
    await asyncio.wait({log._task})  # type: ignore[arg-type]
    log._task = None


async def test_a_store_slower_than_traffic_keeps_memory_bounded(tmp_path: Path) -> None:
    class SlowStore(FlakyStore):
        async def insert_records(self, records: Sequence[InferenceRecord]) -> None:
            await asyncio.sleep(0.02)
            await super().insert_records(records)

    store = SlowStore()
    log = InferenceLogger(
        store, tmp_path / "spool", batch_size=5, flush_interval=0.01, max_pending=20
    )
    log.start()
    deepest = 0
    for burst in range(10):
        # Six times what one write takes arrives per write. Pacing the bursts by the
        # store's writes, not by the clock, keeps the bound free of thread timing.
        writes = len(store.batches)
        submit(log, 30, offset=burst * 30)
        deepest = max(deepest, log.depth)
        await eventually(lambda writes=writes: len(store.batches) > writes)
    # Bounded by max_pending, one batch and what arrives during one write, not by the traffic.
    assert deepest <= 20 + 5 + 30
    await eventually(lambda: len(store.rows) == 300)
    await log.close()
    assert log.stats.spooled > 0 and log.stats.lost == 0


def test_the_spool_keeps_floats_exact(tmp_path: Path) -> None:
    exact = [-0.044641636506989144, 0.1 + 0.2, 5e-324, -0.0]
    parsed = InferenceRecord("p", "m", "1", 1.0, "application/json",
                             {"inputs": exact}, {"predictions": exact})  # fmt: skip
    text = InferenceRecord("t", "m", "1", 2.0, "application/json",
                           json.dumps({"inputs": exact}), None)  # fmt: skip
    spool = Spool(tmp_path)
    back = spool.read(spool.write([parsed, text]))
    assert [repr(v) for v in back[0].inputs["inputs"]] == [repr(v) for v in exact]
    assert back[1].inputs == text.inputs


async def test_sampling_keeps_the_calls_whose_ids_hash_in(tmp_path: Path) -> None:
    store = FlakyStore()
    log = InferenceLogger(store, tmp_path / "spool", flush_interval=0.01, sample=0.3)
    log.start()
    ids = [f"call-{i}" for i in range(400)]
    for rid in ids:
        log.submit("m", "1", "application/json", b'{"instances": [[1]]}', b"[1]", request_id=rid)
    kept = {rid for rid in ids if sampled_in(rid, 0.3)}
    await eventually(lambda: len(store.rows) == len(kept))
    await log.close()
    assert {r.request_id for r in store.rows.values()} == kept
    assert log.stats.sampled_out == len(ids) - len(kept)
    assert 0.2 < len(kept) / len(ids) < 0.4  # a fraction near 0.3, the same on every run


async def test_redaction_happens_before_the_store_and_the_spool(tmp_path: Path) -> None:
    store = FlakyStore()
    store.down = True
    redactor = Redactor({"ssn": "drop", "email": "hash"}, b"k" * 32)
    log = InferenceLogger(store, tmp_path / "spool", flush_interval=0.01, max_pending=1,
                          max_backoff=0.05, redactor=redactor)  # fmt: skip
    log.start()
    body = json.dumps({"dataframe_records": [{"ssn": "123-45-6789", "email": "a@b.c", "x": 1}]})
    log.submit("m", "1", "application/json", body.encode(), b"[1]", request_id="r1")
    log.submit("m", "1", "application/json", body.encode(), b"[1]", request_id="r2")
    await eventually(lambda: log.stats.spooled > 0)
    spooled = "".join(f.read_text() for f in (tmp_path / "spool").glob("spool-*.jsonl"))
    assert "123-45-6789" not in spooled and "a@b.c" not in spooled and "ssn" not in spooled
    store.down = False
    await eventually(lambda: len(store.rows) == 2)
    await log.close()
    for record in store.rows.values():
        assert json.loads(record.inputs) == {
            "dataframe_records": [{"email": redactor.hash("a@b.c"), "x": 1}]
        }
