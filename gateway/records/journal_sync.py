"""Forces the inference journal to disk as GATEWAY_LOG_FSYNC says, off the event loop.

Every fdatasync runs in a worker thread. `batch` and `never`: a timer, every
`interval` (`never` only closes the segments that were sealed). `always`: as soon as
a call waits in `durable()`, and calls that arrive during one fdatasync share the
next (group commit), so a thousand calls in flight cost a few disk flushes, not a
thousand.
"""

from __future__ import annotations

import asyncio
import logging

from gateway.records.journal import Journal

logger = logging.getLogger(__name__)


class JournalSync:
    """Owns the sync task and the calls waiting for it."""

    def __init__(self, journal: Journal, interval: float) -> None:
        self.journal = journal
        self.interval = interval
        #: GATEWAY_LOG_FSYNC=always: each answer waits in `durable()`.
        self.each_call = journal.fsync == "always"
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._synced = 0  # frames covered by the last finished sync
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="inference-journal-sync")

    async def stop(self) -> None:
        """Stop the task; the caller's final `journal.close` syncs, then `release_all`."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task})
            self._task = None

    def release_all(self) -> None:
        self._release(self.journal.appended)

    async def durable(self) -> None:
        """Return once every call journaled so far is on disk."""
        target = self.journal.appended
        if self._synced >= target or self._task is None:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((target, waiter))
        self._wake.set()
        await waiter

    async def _run(self) -> None:
        while True:
            if self.each_call:
                await self._wake.wait()
                self._wake.clear()
            else:
                await asyncio.sleep(self.interval)
                if not self.journal.needs_sync():
                    continue
            target = self.journal.appended
            try:
                await asyncio.to_thread(self.journal.sync)
            except OSError as exc:
                # The calls are journaled and queued: only their power-cut safety failed,
                # which must not fail the calls themselves.
                logger.error("inference journal sync failed: %s", exc)
            self._synced = target
            self._release(target)

    def _release(self, target: int) -> None:
        waiting, self._waiters = self._waiters, []
        for covered, waiter in waiting:
            if covered > target:
                self._waiters.append((covered, waiter))
            elif not waiter.done():
                waiter.set_result(None)
        if self._waiters:
            self._wake.set()
