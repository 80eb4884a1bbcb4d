"""Fakes for supervision tests: a clock whose sleeps return at once, and a
placement that runs no process (its backends' /ping is one in-process server)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Iterable, Sequence, Set
from contextlib import asynccontextmanager

from aiohttp import web

from supervisor.errors import BackendStartError
from supervisor.placement.base import BackendHandle, Placement
from supervisor.state_store import DeploymentRecord, SavedBackend
from tests.support import unused_port


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


class Ears:
    """Whether the ping server answers, and how many pings it heard while deaf."""

    def __init__(self) -> None:
        self._hearing = asyncio.Event()
        self._hearing.set()
        self.unanswered = 0

    @property
    def deaf(self) -> bool:
        return not self._hearing.is_set()

    @deaf.setter
    def deaf(self, deaf: bool) -> None:
        if deaf:
            self._hearing.clear()
        else:
            self._hearing.set()

    async def hear(self) -> None:
        await self._hearing.wait()


@asynccontextmanager
async def ping_server(ears: Ears | None = None) -> AsyncIterator[int]:
    """A real HTTP server on loopback answering /ping: every fake backend's endpoint.

    While `ears.deaf`, a ping waits (as at a hung backend) until it is heard again.
    """
    ears = ears or Ears()

    async def ping(request: web.Request) -> web.Response:
        if ears.deaf:
            ears.unanswered += 1
            await ears.hear()  # the server's cleanup makes it hear again first
        return web.Response(text="\n")

    app = web.Application()
    app.router.add_get("/ping", ping)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        ears.deaf = False
        await runner.cleanup()


class FakeHandle(BackendHandle):
    """A backend that is only a future: it ends when told to (or when first watched)."""

    def __init__(self, port: int, ref: str, *, crash_when_watched: bool = False) -> None:
        self.host = "127.0.0.1"
        self.port = port
        self.node = "fake-node"
        self.ref = ref
        self._ended: asyncio.Future[int | str] = asyncio.get_running_loop().create_future()
        self._crash = crash_when_watched
        self.stops = 0
        self.graces: list[float] = []

    @property
    def alive(self) -> bool:
        return not self._ended.done()

    def exit(self, code: int | str) -> None:
        if not self._ended.done():
            self._ended.set_result(code)

    async def wait_exit(self) -> int | str:
        if self._crash:
            self.exit(1)
        return await asyncio.shield(self._ended)

    async def stop(self, grace: float) -> None:
        self.stops += 1
        self.graces.append(grace)
        self.exit("stopped")

    async def log_tail(self, lines: int = 25) -> str:
        return f"output of {self.ref}"


class FakePlacement(Placement):
    """Follows a script, one word per start; "run" once the script is used up.

    run: ready, runs until told to exit; crash: ready, exits as soon as it is
    watched; deaf: never answers /ping; fail: the start itself fails.
    """

    name = "fake"

    def __init__(self, ping_port: int, script: Iterable[str] = ()) -> None:
        self.ping_port = ping_port
        self.script = deque(script)
        self.started: list[FakeHandle] = []
        self.reserved: list[tuple[str, list[int]]] = []
        self.survivors: dict[tuple[str, int], FakeHandle] = {}
        self.attached: list[SavedBackend] = []
        self.swept: list[set[tuple[str, int]]] = []

    async def reserve(self, record: DeploymentRecord, replicas: Sequence[int]) -> None:
        self.reserved.append((record.key, list(replicas)))

    async def start(self, record: DeploymentRecord, replica: int) -> FakeHandle:
        word = self.script.popleft() if self.script else "run"
        if word == "fail":
            raise BackendStartError("fake start failed", "fake output")
        port = unused_port() if word == "deaf" else self.ping_port
        ref = f"{record.key}#{replica}/{len(self.started)}"
        handle = FakeHandle(port, ref, crash_when_watched=word == "crash")
        self.started.append(handle)
        return handle

    async def attach(
        self, record: DeploymentRecord, replica: int, saved: SavedBackend
    ) -> FakeHandle | None:
        self.attached.append(saved)
        survivor = self.survivors.get((record.key, replica))
        return survivor if survivor is not None and survivor.ref == saved.ref else None

    async def sweep(self, wanted: Set[tuple[str, int]]) -> None:
        self.swept.append(set(wanted))

    async def close(self) -> None:
        pass
