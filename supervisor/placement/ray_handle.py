"""The gateway's side of one backend that a named Ray actor runs on some node.

A watcher task awaits the actor's `wait_exit` from the moment the handle exists,
so `alive` turns False as soon as the backend exits or its actor is lost (a
dead node raises ActorUnavailableError or ActorDiedError there). The backend's
last output is fetched before its actor is killed: afterwards it is gone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import ray
from ray.exceptions import RayActorError, RayError

from supervisor.placement.base import BackendHandle

logger = logging.getLogger(__name__)

CALL_TIMEOUT = 10.0  # a question to a live actor (stop, describe, log_tail)
_TAIL_LINES = 200  # output kept from an actor before it is killed


class RayHandle(BackendHandle):
    """A backend that a named actor runs on some node of the cluster."""

    def __init__(self, actor: Any, info: dict[str, Any], on_lost: Callable[[str], None]) -> None:
        self.actor = actor
        self.ref = str(info["name"])
        self.node = str(info["node_id"])
        self.host = str(info["host"])
        self.port = int(info["port"])
        self.pid = None  # not a process of this machine
        self.child_pid: int | None = info.get("child_pid")
        """The backend's pid on its node (for operators and tests)."""
        self.worker_pid: int | None = info.get("worker_pid")
        self._on_lost = on_lost
        self._tail = ""
        self._stopping = False
        self._killed = False
        self._actor_gone = False  # lost with its node: calls to it would only wait
        self._stop_lock = asyncio.Lock()
        self._ended: asyncio.Future[int | str] = asyncio.get_running_loop().create_future()
        self._watcher = asyncio.ensure_future(self._watch())

    @property
    def alive(self) -> bool:
        return not self._ended.done()

    async def wait_exit(self) -> int | str:
        return await asyncio.shield(self._ended)

    async def stop(self, grace: float) -> None:
        async with self._stop_lock:
            if self._killed:
                return
            self._stopping = True
            if self.alive:
                try:
                    await asyncio.wait_for(call(self.actor.stop, grace), grace + CALL_TIMEOUT)
                except (RayError, TimeoutError) as exc:
                    logger.info("%s: no graceful stop (%s); killing its actor", self.ref,
                                reason(exc))  # fmt: skip
            await self._keep_tail()
            # Through the cluster's control plane: also frees the name and the
            # resources of an actor whose node is gone.
            await asyncio.to_thread(ray.kill, self.actor, no_restart=True)
            self._killed = True
            self._end("stopped")
            self._watcher.cancel()

    async def log_tail(self, lines: int = 25) -> str:
        if not self._killed and not self._actor_gone:
            await self._keep_tail(max(lines, _TAIL_LINES))
        return "\n".join(self._tail.splitlines()[-lines:])

    async def release(self) -> None:
        """Stop watching; the actor keeps running (for the next gateway to attach)."""
        self._watcher.cancel()
        await asyncio.wait({self._watcher})

    async def _keep_tail(self, lines: int = _TAIL_LINES) -> None:
        if self._actor_gone:
            return  # its output stayed on the lost node: keep what was read before
        try:
            self._tail = await asyncio.wait_for(call(self.actor.log_tail, lines), CALL_TIMEOUT)
        except (RayError, TimeoutError):
            pass  # the actor (or its node) is gone: keep what was read before

    async def _watch(self) -> None:
        try:
            code = await call(self.actor.wait_exit)
        except RayActorError as exc:
            # Killed, or its node (or the link to it) is lost: no exit code to give.
            if not self._stopping:
                self._actor_gone = True
                self._on_lost(self.node)
            self._end(f"its Ray actor is gone: {reason(exc)}")
        except RayError as exc:
            self._end(f"Ray could not watch it: {reason(exc)}")
        else:
            await self._keep_tail()
            self._end(int(code))

    def _end(self, outcome: int | str) -> None:
        if not self._ended.done():
            self._ended.set_result(outcome)


async def call(method: Any, *args: Any) -> Any:
    """Call an actor method and await its result without blocking the loop."""
    return await method.remote(*args)


def reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
