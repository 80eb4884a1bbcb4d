"""Deletes logged calls older than the retention period, off the hot path.

The store deletes in short batches (SQLite) or by one filtered delete behind its
TTL index (MongoDB); this task only says when. It runs once at start-up and then
every `interval` seconds; a failure is logged and tried again next time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from gateway.records.stores.base import Store

logger = logging.getLogger(__name__)

DAY = 86_400.0


class RetentionJob:
    """Owns the purge task; `close()` cancels and awaits it."""

    def __init__(
        self,
        store: Store,
        days: float,
        *,
        interval: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.days = days
        self.interval = interval
        self._clock = clock
        self.deleted = 0
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> int:
        """Delete what is older than the period now; how many records went."""
        cutoff = self._clock() - self.days * DAY
        deleted = await self.store.purge_before(cutoff)
        self.deleted += deleted
        if deleted:
            logger.info("retention: deleted %d inference records older than %g days",
                        deleted, self.days)  # fmt: skip
        return deleted

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="inference-log-retention")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task})
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.run_once()
            except self.store.transient_errors as exc:
                logger.warning("retention: the store is unavailable (%s); trying later", exc)
            except Exception:
                logger.exception("retention: purge failed unexpectedly")
            await asyncio.sleep(self.interval)
