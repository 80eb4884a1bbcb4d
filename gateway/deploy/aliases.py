"""Following registry aliases: a poll in the background, and webhook nudges.

`mlflow models serve -m models:/name@champion` resolves the alias once; here a
deployment keyed `{name}@{alias}` checks where its alias points every
GATEWAY_ALIAS_POLL_S seconds (registry reads run in a thread), and at once when
MLflow's webhook reports an alias change. The deploy service does the move.
"""

from __future__ import annotations

import asyncio
import logging

from gateway.deploy.service import DeployService

logger = logging.getLogger(__name__)


class AliasFollower:
    """Owns the poll task and the tasks webhooks start; `close` cancels and awaits them."""

    def __init__(self, service: DeployService, poll_seconds: float) -> None:
        self._service = service
        self._poll_seconds = poll_seconds
        self._poller: asyncio.Task[None] | None = None
        self._nudges: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        if self._poll_seconds > 0:
            self._poller = asyncio.create_task(self._poll(), name="alias-poller")

    async def close(self) -> None:
        tasks = {*self._nudges, *([self._poller] if self._poller else [])}
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        self._poller = None
        self._nudges.clear()

    def nudge(self, name: str, alias: str) -> list[str]:
        """Check the deployments that follow `name@alias` now; returns their keys."""
        keys = self._service.alias_keys(name, alias)
        for key in keys:
            task = asyncio.create_task(self._follow(key, retry_failed=True), name=f"alias {key}")
            self._nudges.add(task)
            task.add_done_callback(self._nudges.discard)
        return keys

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._poll_seconds)
            for key in self._service.alias_keys():
                await self._follow(key)

    async def _follow(self, key: str, retry_failed: bool = False) -> None:
        try:
            await self._service.follow_alias(key, retry_failed=retry_failed)
        except asyncio.CancelledError:
            raise
        except Exception:
            # A bug must not stop following the other aliases; it is logged whole.
            logger.exception("following the alias of %s failed", key)
