"""Logs what models are asked, off the hot path, in batches: an answered call is never lost.

`submit()` is what an inference request pays: the call goes to the journal
(journal.py: one `os.writev` of one frame into the page cache, which outlives the
process) and, while fewer than `max_pending` calls wait in memory, into a queue.
A background writer turns calls into records and writes them to the store in
batches (by size or every `flush_interval`), retrying with backoff while it fails.
Past `max_pending`, calls wait on disk only: the writer reads them back from the
journal when it gets to them, so memory stays bounded through an outage of any
length. A journal segment is removed once the store has every call in it; the
segments an earlier process left (killed, or stopped with the store down) are
replayed first. Record ids are made at submit and journaled, so replaying a call
the store already has adds nothing.

A journal write that fails (a full disk) does not fail the call: the call is kept
in memory only (up to `max_pending`), and counted in `lost` if it never reaches the
store, also when the process dies holding it (their number is kept on disk). `lost`
is kept beside the journal and survives restarts.

What is kept of a call is decided as before: a deterministic sample by request id
(`sample`; a call sampled out is not journaled), at most `max_rows` rows of its
inputs and predictions (the rest counted in `truncated_rows`; see row_cap), with
redacted input fields dropped or hashed (`redactor`). Row cap and redaction run in
the writer (a worker thread when they have work), never on the hot path: so the
journal holds raw bodies, on the gateway's own disk (mode 0600), until the store has them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from gateway.records.journal import Call, Fsync, Journal
from gateway.records.journal_sync import JournalSync
from gateway.records.privacy import Redactor, sampled_in
from gateway.records.row_cap import cap_call, may_need_cap
from gateway.records.spool import Spool
from gateway.records.stores.base import InferenceRecord, Store

logger = logging.getLogger(__name__)

# With nothing to write for this long, the current segment is sealed and removed, so
# an idle gateway keeps no journal; one older than IDLE_MAX_AGE_S goes too once drained.
IDLE_SEAL_S = 1.0
IDLE_MAX_AGE_S = 30.0


@dataclass
class LogStats:
    """Counters the metrics endpoint exports (`lost` survives restarts; the rest count
    since start)."""

    submitted: int = 0
    journaled: int = 0  # calls written to the journal
    unjournaled: int = 0  # calls the journal could not take (a full disk): memory only
    written: int = 0  # records in the store
    retried: int = 0
    spooled: int = 0  # calls past max_pending: on disk only, read back later
    replayed: int = 0  # records read back from the journal (spooled, or an earlier process's)
    torn: int = 0  # damaged journal frames (a write cut short by a crash); also lost
    lost: int = 0
    sampled_out: int = 0
    truncated_rows: int = 0  # rows past GATEWAY_LOG_MAX_ROWS_PER_CALL, never logged
    store_up: bool = True


class _Span:
    """Calls in journal bytes [start, stop) of one segment, not held in memory."""

    __slots__ = ("seq", "start", "stop")

    def __init__(self, seq: int, start: int, stop: int) -> None:
        self.seq, self.start, self.stop = seq, start, stop


@dataclass
class _Batch:
    records: list[InferenceRecord]
    upto: tuple[int, int] = (0, 0)  # the journal position its last journaled call ends at
    from_disk: int = 0  # records read back from the journal
    unjournaled: int = 0  # records only memory had


def _records(
    calls: list[Call], redactor: Redactor | None, max_rows: int, large: bool = True
) -> tuple[list[InferenceRecord], int]:
    """The records of `calls`, and how many rows the row cap dropped.

    `large`: some call may have more than `max_rows` rows (see `may_need_cap`); when
    none may, the row cap is skipped, one call less per record.
    """
    records, truncated = [], 0
    for rid, ts, model, version, content_type, inputs, answer, request_id, arm, _, _ in calls:
        text = inputs.decode("utf-8", "replace")
        predictions = answer.decode("utf-8", "replace") if answer is not None else None
        dropped = 0
        if large:
            text, predictions, dropped = cap_call(content_type, text, predictions, max_rows)
            truncated += dropped
        kept: str | None = text
        if redactor is not None:
            kept = redactor.apply(content_type, text.encode() if dropped else inputs)
        # Positional: a third cheaper than by keyword, once per logged call.
        records.append(InferenceRecord(rid.hex(), model, version, ts, content_type, kept,
                                       predictions, request_id, None, None, arm))  # fmt: skip
    return records, truncated


class InferenceLogger:
    """Owns the journal, the calls waiting for the store, and the writer tasks."""

    def __init__(
        self,
        store: Store,
        journal_dir: Path,
        *,
        batch_size: int = 500,
        flush_interval: float = 0.1,
        max_pending: int = 50_000,
        max_backoff: float = 5.0,
        sample: float = 1.0,
        redactor: Redactor | None = None,
        max_rows: int = 10_000,
        fsync: Fsync = "batch",
        fsync_interval: float = 1.0,
        segment_bytes: int = 16 << 20,
        legacy_spool: Path | None = None,
    ) -> None:
        self.store = store
        self.journal = Journal(journal_dir, fsync=fsync, segment_bytes=segment_bytes)
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_pending = max_pending
        self.max_backoff = max_backoff
        self.sample = sample
        self.redactor = redactor
        self.max_rows = max_rows
        self.syncer = JournalSync(self.journal, fsync_interval)
        #: GATEWAY_LOG_FSYNC=always: the proxy awaits `durable()` after `submit()`.
        self.sync_each_call = self.syncer.each_call
        self.stats = LogStats()
        self._queue: deque[Call | _Span] = deque()
        self._held = 0  # calls in _queue held in memory (not spans)
        self._retry: deque[_Batch] = deque()
        self._done: tuple[int, int] = (0, 0)  # stored calls reach this journal position
        self._memory_only = 0  # calls held that the journal does not have
        self._journal_ok = True
        self._legacy = Spool(legacy_spool) if legacy_spool is not None else None
        self._legacy_files: list[Path] = []
        # Record ids: a random per-process prefix and a counter, as 32 hex digits.
        self._prefix = os.urandom(8)
        self._serial = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # ----------------------------------------------------------------- hot path

    def submit(
        self,
        model: str,
        version: str,
        content_type: str,
        inputs: bytes,
        answer: bytes | None,
        request_id: str | None = None,
        arm: str = "primary",
    ) -> None:
        """Journal one call and queue it. Never blocks on the store, never raises.

        `arm` is `shadow` for the copy of a call a route's shadow version answered.
        """
        stats = self.stats
        stats.submitted += 1
        if self.sample < 1.0 and not sampled_in(request_id, self.sample):
            stats.sampled_out += 1
            return
        self._serial += 1
        rid = self._prefix + self._serial.to_bytes(8, "big")
        ts = time.time()
        try:
            seq, start, end = self.journal.append(
                rid, ts, model, version, content_type, request_id, arm, inputs, answer
            )
        except (OSError, ValueError, TypeError, struct.error) as exc:
            self._keep_in_memory(exc, (rid, ts, model, version, content_type, inputs, answer,
                                       request_id, arm, 0, 0))  # fmt: skip
            return
        stats.journaled += 1
        if not self._journal_ok:
            self._journal_ok = True
            logger.info("the inference journal takes writes again")
        if self._held < self.max_pending:
            self._queue.append((rid, ts, model, version, content_type, inputs, answer,
                                request_id, arm, seq, end))  # fmt: skip
            self._held += 1
        else:  # memory is full: the call waits in the journal only
            stats.spooled += 1
            tail = self._queue[-1] if self._queue else None
            if isinstance(tail, _Span) and tail.seq == seq and tail.stop == start:
                tail.stop = end
            else:
                self._queue.append(_Span(seq, start, end))
        if not self._wake.is_set():
            self._wake.set()

    def _keep_in_memory(self, exc: Exception, call: Call) -> None:
        self.stats.unjournaled += 1
        if self._journal_ok:
            self._journal_ok = False
            logger.error("inference journal write failed (%s): calls are kept in memory only", exc)
        if self._held >= self.max_pending:
            self._lose(1)
            return
        self._queue.append(call)
        self._held += 1
        self._memory_only += 1
        self._save_counters()  # now: a process killed while it holds the call counts it
        if not self._wake.is_set():
            self._wake.set()

    async def durable(self) -> None:
        """Return once every call journaled so far is on disk (GATEWAY_LOG_FSYNC=always)."""
        await self.syncer.durable()

    @property
    def depth(self) -> int:
        """Calls and records held in memory (calls waiting on disk only are not counted)."""
        return self._held + sum(len(b.records) for b in self._retry)

    # ------------------------------------------------------------------ writer

    async def start(self) -> None:
        """Open the journal, queue what an earlier process left in it, start the tasks."""
        try:
            earlier, lost, held = await asyncio.to_thread(self.journal.open)
        except OSError as exc:
            # Serving goes on: each call is then kept in memory only (and said so).
            logger.error("the inference journal in %s cannot be opened: %s",
                         self.journal.directory, exc)  # fmt: skip
            earlier, lost, held = [], 0, 0
        self.stats.lost = lost + held
        if held:
            logger.error("%d inference calls died with the previous process: the journal could"
                         " not take them, and they never reached the store", held)  # fmt: skip
            self._save_counters()
        for seq, size in earlier:  # before any new call: replayed first
            self._queue.append(_Span(seq, 0, size))
        if earlier:
            logger.info("replaying %d journal segments of an earlier process", len(earlier))
        if self._legacy is not None:
            self._legacy_files = await asyncio.to_thread(self._legacy.recover)
        self._task = asyncio.create_task(self._run(), name="inference-log-writer")
        self.syncer.start()

    async def close(self, timeout: float = 10.0) -> None:
        """Stop the writer and store what it can within `timeout`.

        What is left stays in the journal for the next start; only calls the journal
        never had (a full disk) are lost.
        """
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task})
            self._task = None
        await self.syncer.stop()
        try:
            await asyncio.wait_for(self._flush(), timeout)
        except (TimeoutError, *self.store.transient_errors) as exc:  # type: ignore[misc]
            logger.warning("store unavailable at shutdown (%s): %d calls stay in the journal",
                           exc, self.depth)  # fmt: skip
        left = sum(1 for c in self._queue if not isinstance(c, _Span) and c[9] == 0)
        left += sum(b.unjournaled for b in self._retry)
        if left:
            logger.error("%d inference calls the journal never had are lost at shutdown", left)
            self._memory_only = 0
            self._lose(left)
        self._save_counters()
        everything = not self._queue and not self._retry
        self.journal.seal()
        await asyncio.to_thread(self.journal.close, remove_all=everything)
        self.journal.close_counters()
        self.syncer.release_all()

    async def _run(self) -> None:
        backoff = self.flush_interval
        while True:
            if not self._queue and not self._retry and not self._legacy_files:
                await self._idle()
            head = self._queue[0] if self._queue else None
            if self._held < self.batch_size and not self._retry and not isinstance(head, _Span):
                await asyncio.sleep(self.flush_interval)  # let a batch gather
            try:
                if self._legacy_files:
                    await self._replay_legacy()
                await self._flush()
            except Exception as exc:
                if not isinstance(exc, self.store.transient_errors):
                    logger.exception("inference log write failed unexpectedly")
                elif self.stats.store_up:
                    logger.warning("inference store unavailable (%s); calls wait in the journal",
                                   exc)  # fmt: skip
                self.stats.store_up = False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
                continue
            if not self.stats.store_up:
                logger.info("inference store is back")
            self.stats.store_up = True
            backoff = self.flush_interval

    async def _idle(self) -> None:
        """Wait for calls; an idle journal is sealed and removed (everything is stored)."""
        await self._retire()
        self._wake.clear()
        try:
            async with asyncio.timeout(IDLE_SEAL_S):
                await self._wake.wait()
            return
        except TimeoutError:
            pass
        if not self._queue and not self._retry:
            self.journal.seal()
            await self._retire()
        await self._wake.wait()

    async def _next_batch(self) -> _Batch | None:
        if self._retry:
            return self._retry.popleft()
        calls: list[Call] = []
        from_disk = 0
        try:
            while self._queue and len(calls) < self.batch_size:
                item = self._queue[0]
                if isinstance(item, _Span):
                    read = await self._read_span(item, self.batch_size - len(calls))
                    from_disk += len(read)
                    calls.extend(read)
                    continue
                self._queue.popleft()
                self._held -= 1
                calls.append(item)
            if not calls:
                return None
            large = may_need_cap(
                max(max(len(c[5]), len(c[6] or b"")) for c in calls), self.max_rows
            )
            if self.redactor is None and not large:
                records, truncated = _records(calls, None, self.max_rows, large=False)
            else:
                records, truncated = await asyncio.to_thread(
                    _records, calls, self.redactor, self.max_rows, large
                )
        except BaseException:
            # Cancelled while reading or redacting: nothing taken may be lost.
            self._queue.extendleft(reversed(calls))
            self._held += len(calls)
            raise
        self.stats.truncated_rows += truncated
        journaled = [(c[9], c[10]) for c in calls if c[9]]
        return _Batch(records, max(journaled, default=(0, 0)), from_disk,
                      len(calls) - len(journaled))  # fmt: skip

    async def _read_span(self, span: _Span, limit: int) -> list[Call]:
        """Up to `limit` calls of the span at the queue's head, read back from the journal."""
        calls, pos, damaged = await asyncio.to_thread(
            self.journal.read, span.seq, span.start, span.stop, limit
        )
        span.start = pos
        if damaged:
            self.stats.torn += 1
            self._lose(1)
            span.stop = pos
        if span.start >= span.stop and self._queue and self._queue[0] is span:
            self._queue.popleft()
        return calls

    async def _flush(self) -> None:
        while batch := await self._next_batch():
            try:
                await self.store.insert_records(batch.records)
            except BaseException:
                self._retry.appendleft(batch)
                self.stats.retried += len(batch.records)
                raise
            self.stats.written += len(batch.records)
            self.stats.replayed += batch.from_disk
            self._done = max(self._done, batch.upto)
            if batch.unjournaled:
                self._memory_only -= batch.unjournaled
                self._save_counters()
            await self._retire()

    async def _retire(self) -> None:
        """Remove the journal segments whose calls are all in the store."""
        everything = not self._queue and not self._retry
        if everything:
            started = self.journal.current_started()
            if started is not None and time.time() - started > IDLE_MAX_AGE_S:
                self.journal.seal()
        for seq in self.journal.removable(self._done, everything):
            await asyncio.to_thread(self.journal.remove, seq)

    async def _replay_legacy(self) -> None:
        assert self._legacy is not None
        while self._legacy_files:
            n = await self._legacy.replay(self._legacy_files[0], self.store, self.batch_size)
            self._legacy_files.pop(0)
            self.stats.replayed += n
            self.stats.written += n

    # ------------------------------------------------------------------- lost

    def _lose(self, n: int) -> None:
        self.stats.lost += n
        self._save_counters()

    def _save_counters(self) -> None:
        try:
            self.journal.save_counters(self.stats.lost, self._memory_only)
        except OSError as exc:
            logger.error("could not save the inference log's lost count: %s", exc)
