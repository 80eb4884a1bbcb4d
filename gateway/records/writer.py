"""Logs what models are asked, off the hot path, in batches, losing nothing.

`submit()` is all an inference request pays: one tuple appended to a deque.
A background writer turns those into records and writes them in batches (by
size or every `flush_interval`). When the store fails, batches wait and are
retried with backoff; past `max_pending` they go to a local spool file and are
replayed when the store is back. Only a failed spool write (a full disk) loses
records, and `lost` counts them.

What is kept of a call is decided here, before anything is stored or spooled:
a deterministic sample by request id (`sample`), at most `max_rows` rows of its
inputs and predictions (the rest counted in `truncated_rows`; see row_cap), with
redacted input fields dropped or hashed (`redactor`). Both run in a worker
thread when they have work: they read the body.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from gateway.records.privacy import Redactor, sampled_in
from gateway.records.row_cap import cap_call, may_need_cap
from gateway.records.spool import Spool
from gateway.records.stores.base import InferenceRecord, Store

logger = logging.getLogger(__name__)


@dataclass
class LogStats:
    """Counters the metrics endpoint exports."""

    submitted: int = 0
    written: int = 0
    retried: int = 0
    spooled: int = 0
    replayed: int = 0
    lost: int = 0
    sampled_out: int = 0
    truncated_rows: int = 0  # rows past GATEWAY_LOG_MAX_ROWS_PER_CALL, never logged
    store_up: bool = True


# (time, model, version, content type, body, answer, request id, arm): what submit() keeps.
_Call = tuple[float, str, str, str, bytes, bytes | None, str | None, str]


def _records(
    calls: list[_Call], redactor: Redactor | None, max_rows: int
) -> tuple[list[InferenceRecord], int]:
    """The records of `calls`, and how many rows the row cap dropped."""
    records, truncated = [], 0
    for ts, model, version, content_type, inputs, answer, request_id, arm in calls:
        text = inputs.decode("utf-8", "replace")
        predictions = answer.decode("utf-8", "replace") if answer is not None else None
        text, predictions, dropped = cap_call(content_type, text, predictions, max_rows)
        truncated += dropped
        kept: str | None = text
        if redactor is not None:
            kept = redactor.apply(content_type, text.encode() if dropped else inputs)
        records.append(
            InferenceRecord(
                id=uuid.uuid4().hex,
                model=model,
                version=version,
                ts=ts,
                content_type=content_type,
                inputs=kept,
                predictions=predictions,
                request_id=request_id,
                arm=arm,
            )
        )
    return records, truncated


class InferenceLogger:
    """Owns the pending records and the writer task."""

    def __init__(
        self,
        store: Store,
        spool_dir: Path,
        *,
        batch_size: int = 500,
        flush_interval: float = 0.1,
        max_pending: int = 50_000,
        max_backoff: float = 5.0,
        sample: float = 1.0,
        redactor: Redactor | None = None,
        max_rows: int = 10_000,
    ) -> None:
        self.store = store
        self.spool = Spool(spool_dir)
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_pending = max_pending
        self.max_backoff = max_backoff
        self.sample = sample
        self.redactor = redactor
        self.max_rows = max_rows
        self.stats = LogStats()
        self._incoming: deque[_Call] = deque()
        self._retry: deque[InferenceRecord] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._replay_due = False

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
        """Queue one call's body and answer. Never blocks, never raises.

        `arm` is `shadow` for the copy of a call a route's shadow version answered.
        """
        self._incoming.append(
            (time.time(), model, version, content_type, inputs, answer, request_id, arm)
        )
        self.stats.submitted += 1
        if not self._wake.is_set():
            self._wake.set()

    @property
    def depth(self) -> int:
        return len(self._incoming) + len(self._retry)

    # ------------------------------------------------------------------ writer

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="inference-log-writer")

    async def close(self, timeout: float = 10.0) -> None:
        """Stop the writer, then flush what is pending (or spool it)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task})
            self._task = None
        try:
            await asyncio.wait_for(self._flush(), timeout)
        except (TimeoutError, *self.store.transient_errors) as exc:  # type: ignore[misc]
            logger.warning("store unavailable at shutdown (%s); spooling %d", exc, self.depth)
        await self._spill()

    async def _run(self) -> None:
        backoff = self.flush_interval
        # Partial spool files of an earlier process are dropped; whole ones replayed.
        self._replay_due = bool(await asyncio.to_thread(self.spool.recover))
        while True:
            if not self.depth and not self._replay_due:
                self._wake.clear()
                await self._wake.wait()
            if len(self._incoming) < self.batch_size:
                await asyncio.sleep(self.flush_interval)  # let a batch gather
            try:
                await self._flush()
                if self._replay_due:
                    self._replay_due = False
                    await self._replay()
            except Exception as exc:
                if not isinstance(exc, self.store.transient_errors):
                    logger.exception("inference log write failed unexpectedly")
                elif self.stats.store_up:
                    logger.warning("inference store unavailable (%s); keeping records", exc)
                self.stats.store_up = False
                self._replay_due = True
                if self.depth > self.max_pending:
                    await self._spill()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
                continue
            if not self.stats.store_up:
                logger.info("inference store is back")
            self.stats.store_up = True
            backoff = self.flush_interval

    async def _next_batch(self) -> list[InferenceRecord]:
        batch: list[InferenceRecord] = []
        while self._retry and len(batch) < self.batch_size:
            batch.append(self._retry.popleft())
        calls: list[_Call] = []
        while self._incoming and len(batch) + len(calls) < self.batch_size:
            call = self._incoming.popleft()
            if sampled_in(call[6], self.sample):
                calls.append(call)
            else:
                self.stats.sampled_out += 1
        if not calls:
            return batch
        large = any(may_need_cap(max(len(c[4]), len(c[5] or b"")), self.max_rows) for c in calls)
        try:
            if self.redactor is None and not large:
                records, truncated = _records(calls, None, self.max_rows)
            else:
                records, truncated = await asyncio.to_thread(
                    _records, calls, self.redactor, self.max_rows
                )
            batch.extend(records)
            self.stats.truncated_rows += truncated
        except BaseException:
            # Cancelled while a worker redacted: nothing taken may be lost.
            self._incoming.extendleft(reversed(calls))
            self._retry.extendleft(reversed(batch))
            raise
        return batch

    async def _flush(self) -> None:
        while batch := await self._next_batch():
            try:
                await self.store.insert_records(batch)
            except BaseException:
                self._retry.extendleft(reversed(batch))
                self.stats.retried += len(batch)
                raise
            self.stats.written += len(batch)
            if self.depth > self.max_pending:
                # The store is up but slower than the traffic: memory stays bounded.
                await self._spill()

    async def _spill(self) -> None:
        """Move every pending record to the spool file."""
        records: list[InferenceRecord] = []
        while batch := await self._next_batch():
            records.extend(batch)
        if not records:
            return
        try:
            await asyncio.to_thread(self.spool.write, records)
        except OSError as exc:
            self.stats.lost += len(records)
            logger.error("could not spool %d inference records: %s", len(records), exc)
            return
        self.stats.spooled += len(records)
        self._replay_due = True
        logger.warning("spooled %d inference records to %s", len(records), self.spool.directory)

    async def _replay(self) -> None:
        for path in await asyncio.to_thread(self.spool.files):
            try:
                records = await asyncio.to_thread(self.spool.read, path)
            except (ValueError, TypeError) as exc:
                # Never retry a damaged file forever; keep it aside for a person.
                logger.error("spool file %s is damaged (%s); set aside", path, exc)
                await asyncio.to_thread(path.rename, path.with_suffix(".damaged"))
                continue
            for i in range(0, len(records), self.batch_size):
                if self.depth > self.max_pending // 2:
                    # Live traffic comes first; the file is replayed whole later
                    # (records already in are skipped by id).
                    self._replay_due = True
                    return
                await self.store.insert_records(records[i : i + self.batch_size])
            await asyncio.to_thread(self.spool.remove, path)
            self.stats.replayed += len(records)
            self.stats.written += len(records)
            logger.info("replayed %d spooled inference records", len(records))
