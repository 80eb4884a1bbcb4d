"""Time as the supervisor sees it, injected so tests can run it without waiting."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    """Where supervision reads the time and waits.

    Backoff sleeps, flap windows, `stable_after` and readiness deadlines go
    through it; a fake one lets a crash loop run in milliseconds of real time.
    """

    def now(self) -> float:
        """Monotonic seconds, for deadlines and durations."""
        ...

    def wall(self) -> float:
        """Seconds since the epoch, for timestamps people read."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real time."""

    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
