"""Restart delays: capped exponential backoff with full jitter, and flap detection."""

from __future__ import annotations

import random
from collections import deque


def backoff_delay(
    failures: int, *, base: float = 0.5, cap: float = 30.0, rng: random.Random | None = None
) -> float:
    """Delay before restart number `failures` (1-based).

    Half the delay is fixed and half is jitter, so a crash loop of many models
    does not restart them all in lockstep, yet the delay still grows.
    """
    ceiling = min(cap, base * (2 ** max(failures - 1, 0)))
    return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)


class FlapDetector:
    """Counts restarts in a sliding window, as circus's flapping plugin does."""

    def __init__(self, max_restarts: int, window_seconds: float) -> None:
        self.max_restarts = max_restarts
        self.window_seconds = window_seconds
        self._times: deque[float] = deque()

    def record(self, now: float) -> bool:
        """Record one restart at `now`; True when the window holds too many."""
        self._times.append(now)
        while self._times and now - self._times[0] > self.window_seconds:
            self._times.popleft()
        return len(self._times) > self.max_restarts
