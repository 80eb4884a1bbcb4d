"""The gateway's one connection to a Ray cluster, made lazily and never blocking.

`ray.init` against an address nobody answers blocks for minutes, and it cannot
be cancelled. The gateway must start all the same (its deployments then show
why they wait, and retry with backoff), so: the address is first probed with a
plain TCP connect, and `ray.init` runs in a thread that every caller shares;
a caller waits for it at most `timeout` seconds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import ray

logger = logging.getLogger(__name__)

_PROBE_TIMEOUT = 3.0


class RayConnection:
    """Connects this process to the cluster at `address` once, on first need."""

    def __init__(
        self,
        address: str,
        namespace: str,
        timeout: float,
        on_connected: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.address = address
        self.namespace = namespace
        self.timeout = timeout
        self._on_connected = on_connected
        self._init: asyncio.Future[None] | None = None
        self._ready = False
        self._owner = False  # whether close() disconnects (we called ray.init)
        self._callback_lock = asyncio.Lock()
        self.last_error: str | None = None

    @property
    def connected(self) -> bool:
        return self._ready

    async def connect(self) -> None:
        """Return once connected; raise ConnectionError with the reason otherwise."""
        if not self._ready:
            await self._connect()
            self._ready = True
            self.last_error = None
        if self._on_connected is not None:
            async with self._callback_lock:  # once, even when many wait together
                callback, self._on_connected = self._on_connected, None
                if callback is not None:
                    await callback()

    async def try_connect(self) -> bool:
        """Connect if possible; False (logged once per new reason) when not."""
        try:
            await self.connect()
        except ConnectionError as exc:
            if str(exc) != self.last_error:
                logger.warning("%s", exc)
            self.last_error = str(exc)
            return False
        return True

    async def close(self) -> None:
        if self._owner and ray.is_initialized():
            await asyncio.to_thread(ray.shutdown)
        self._ready = False

    async def _connect(self) -> None:
        if ray.is_initialized():
            return  # this process is already a driver (the tests' own connection)
        if self._init is None or (self._init.done() and self._init.exception() is not None):
            await self._probe()
            self._init = asyncio.ensure_future(asyncio.to_thread(self._ray_init))
        try:
            await asyncio.wait_for(asyncio.shield(self._init), self.timeout)
        except TimeoutError:
            raise ConnectionError(
                f"the Ray cluster at {self.address} did not accept this gateway within"
                f" {self.timeout:g}s; still trying"
            ) from None
        except ConnectionError:
            raise
        except Exception as exc:
            raise ConnectionError(
                f"cannot connect to the Ray cluster at {self.address}: {type(exc).__name__}: {exc}"
            ) from None

    async def _probe(self) -> None:
        host, _, port = self.address.rpartition(":")
        if not host or not port.isdigit():
            return  # not host:port; let Ray interpret it
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(host.strip("[]"), int(port)), _PROBE_TIMEOUT
            )
        except (OSError, TimeoutError) as exc:
            reason = "no answer" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
            raise ConnectionError(
                f"cannot reach the Ray cluster at {self.address} ({reason}): start its head"
                " node (`ray start --head`) or set RAY_ADDRESS to the head's host:port"
            ) from None
        writer.close()

    def _ray_init(self) -> None:
        # In a worker thread: Ray then installs no signal handler of its own (the
        # gateway's graceful shutdown keeps SIGTERM), and configures no logging.
        ray.init(
            address=self.address,
            namespace=self.namespace,
            log_to_driver=False,
            configure_logging=False,
        )
        self._owner = True
        logger.info("connected to the Ray cluster at %s (namespace %r)", self.address,
                    self.namespace)  # fmt: skip
