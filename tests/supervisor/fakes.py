"""Fakes for supervision tests: a clock whose sleeps return at once."""

from __future__ import annotations

import asyncio


class FakeClock:
    """Time that moves only when the supervisor sleeps (or a test advances it).

    Every requested sleep is recorded, so a test reads the backoff delays the
    manager chose without waiting for any of them.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self.time = start
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.time

    def wall(self) -> float:
        return 1_700_000_000.0 + self.time

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.time += max(seconds, 0.0)
        await asyncio.sleep(0)  # still a suspension point, as a real sleep is

    def advance(self, seconds: float) -> None:
        self.time += seconds
