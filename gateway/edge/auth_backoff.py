"""Back-off after failed credentials, per client address.

A few failures are free (a person mistypes); after that each failure makes the
address wait longer before its credentials are checked again (1 s, 2 s, 4 s, ...
up to a minute), and while it waits it is answered 429 at once, without a
bcrypt check. A success, or a quiet quarter of an hour, forgets the address.
Memory is bounded: past `max_addresses` the oldest entries are dropped.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Failures:
    count: int
    last: float
    until: float


class FailureBackoff:
    """Failed-credential counts and back-off deadlines by client address."""

    def __init__(
        self,
        *,
        free: int = 10,
        base: float = 1.0,
        cap: float = 60.0,
        forget_after: float = 900.0,
        max_addresses: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free = free
        self.base = base
        self.cap = cap
        self.forget_after = forget_after
        self.max_addresses = max_addresses
        self._clock = clock
        self._by_address: OrderedDict[str, _Failures] = OrderedDict()

    def retry_after(self, address: str) -> int:
        """Whole seconds the address must still wait; 0 when it may try now."""
        entry = self._by_address.get(address)
        if entry is None:
            return 0
        wait = entry.until - self._clock()
        return math.ceil(wait) if wait > 0 else 0

    def failed(self, address: str) -> None:
        now = self._clock()
        entry = self._by_address.pop(address, None)
        if entry is None or now - entry.last > self.forget_after:
            entry = _Failures(0, now, now)
        entry.count += 1
        entry.last = now
        if entry.count > self.free:
            entry.until = now + min(self.cap, self.base * 2 ** min(entry.count - self.free - 1, 32))
        self._by_address[address] = entry  # most recent last
        while len(self._by_address) > self.max_addresses:
            self._by_address.popitem(last=False)

    def succeeded(self, address: str) -> None:
        self._by_address.pop(address, None)
