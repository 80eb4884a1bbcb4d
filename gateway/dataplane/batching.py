"""Adaptive batching: concurrent calls to one deployment become one backend call.

Opt-in per deployment (`max_batch_size`, `max_batch_delay_ms`). A call is sent
at once when a backend slot is free, so a lone caller never waits for a batch
window; calls that arrive while every slot is busy queue up and leave together
as one `/invocations` call when a slot frees. Only bodies that merge without
changing their meaning are batched: `dataframe_split` with the same columns,
`dataframe_records`, and `instances` lists, with no `params`. Anything else
passes through untouched. The predictions are split back in order; if a merged
call fails, its members are retried one by one, so one bad input never fails
its neighbours. A batch of one sends the caller's own bytes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from gateway.app_keys import BATCHERS, UPSTREAM
from gateway.dataplane.proxy import post_bytes
from gateway.errors import BackendUnavailable, GatewayError, ModelNotReady
from supervisor.deployment import Deployment

logger = logging.getLogger(__name__)

Answer = tuple[int, bytes, str]  # status, body, content type
_JSON = "application/json"


@dataclass(eq=False)
class _Call:
    body: bytes
    content_type: str
    group: tuple[Any, ...]
    rows: list[Any]
    future: asyncio.Future[Answer]
    queued_at: float = field(default_factory=time.monotonic)


def mergeable(body: bytes, content_type: str) -> tuple[tuple[Any, ...], list[Any]] | None:
    """(merge group, rows) of a body that can share a batch, else None."""
    if not content_type.startswith(_JSON):
        return None
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(data, dict) or len(data) != 1:
        return None  # `params` or anything extra: its meaning could differ per call
    ((kind, value),) = data.items()
    if kind == "dataframe_split" and isinstance(value, dict):
        columns, rows = value.get("columns"), value.get("data")
        if (
            set(value) <= {"columns", "data"}
            and isinstance(columns, list)
            and isinstance(rows, list)
            and rows
        ):
            if all(isinstance(c, str) for c in columns):
                return (kind, tuple(columns)), rows
        return None
    if kind in ("dataframe_records", "instances") and isinstance(value, list) and value:
        return (kind,), value
    return None


def _merged_body(group: tuple[Any, ...], rows: list[Any]) -> bytes:
    kind = group[0]
    if kind == "dataframe_split":
        return json.dumps({kind: {"columns": list(group[1]), "data": rows}}).encode()
    return json.dumps({kind: rows}).encode()


class Batcher:
    """Queues mergeable calls of one deployment and dispatches them in batches."""

    def __init__(self, app: web.Application, deployment: Deployment, max_batch_size: int,
                 max_batch_delay_ms: int) -> None:  # fmt: skip
        self.app = app
        self.deployment = deployment
        self.max_batch_size = max_batch_size
        self.max_delay = max_batch_delay_ms / 1000.0
        self._queue: deque[_Call] = deque()
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._linger: asyncio.TimerHandle | None = None
        self._last_batch_size = 1
        self.batches = 0
        self.merged_calls = 0

    def describe(self) -> dict[str, Any]:
        return {
            "max_batch_size": self.max_batch_size,
            "max_batch_delay_ms": round(self.max_delay * 1000),
            "batches": self.batches,
            "merged_calls": self.merged_calls,
            "queued": len(self._queue),
        }

    # ------------------------------------------------------------ hot path

    async def submit(self, body: bytes, content_type: str) -> web.Response | None:
        """The caller's answer, or None when the body is not mergeable."""
        parsed = mergeable(body, content_type)
        if parsed is None:
            return None
        group, rows = parsed
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._queue.append(_Call(body, content_type, group, rows, future))
        self._dispatch()
        status, payload, answer_type = await future
        return web.Response(status=status, body=payload, headers={"Content-Type": answer_type})

    def _slots(self) -> int:
        return max(1, sum(1 for r in self.deployment.replicas if r.routable))

    def _dispatch(self) -> None:
        while self._queue and self._in_flight < self._slots():
            rows_queued = sum(len(c.rows) for c in self._queue)
            # Under load (the last batch merged calls) and with a free slot, wait a
            # moment for more; a lone caller (batches of one) never waits.
            if (self.max_delay and self._last_batch_size > 1 and rows_queued < self.max_batch_size
                    and time.monotonic() - self._queue[0].queued_at < self.max_delay):  # fmt: skip
                if self._linger is None:
                    self._linger = asyncio.get_running_loop().call_later(
                        self.max_delay, self._linger_done
                    )
                return
            batch = self._take()
            self._in_flight += 1
            task = asyncio.create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._finished)

    def _linger_done(self) -> None:
        self._linger = None
        self._last_batch_size = 1  # flush what is queued now
        self._dispatch()

    def _take(self) -> list[_Call]:
        """The oldest call and every queued call of its group, up to the batch size."""
        first = self._queue.popleft()
        batch, rows = [first], len(first.rows)
        keep: deque[_Call] = deque()
        while self._queue:
            call = self._queue.popleft()
            if call.group == first.group and rows + len(call.rows) <= self.max_batch_size:
                batch.append(call)
                rows += len(call.rows)
            else:
                keep.append(call)
        self._queue = keep
        return batch

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._in_flight -= 1
        if not task.cancelled() and task.exception() is not None:
            logger.error("batch task failed: %r", task.exception())
        self._dispatch()

    # ------------------------------------------------------------- backend

    async def _run(self, batch: list[_Call]) -> None:
        self._last_batch_size = len(batch)
        self.batches += 1
        try:
            if len(batch) == 1:
                call = batch[0]
                _settle(call, await self._send(call.body, call.content_type))
                return
            self.merged_calls += len(batch)
            answer = await self._send(
                _merged_body(batch[0].group, [r for c in batch for r in c.rows]), _JSON
            )
            parts = _split(answer, [len(c.rows) for c in batch])
            if parts is None:
                # The merged call failed (or its answer cannot be split): every
                # member gets exactly the answer it would have got alone.
                answers = await asyncio.gather(
                    *(self._send(c.body, c.content_type) for c in batch), return_exceptions=True
                )
                for call, single in zip(batch, answers, strict=True):
                    _settle(call, single)
                return
            for call, part in zip(batch, parts, strict=True):
                _settle(call, (answer[0], part, answer[2]))
        except BaseException as exc:
            for call in batch:
                _settle(call, exc)
            if not isinstance(exc, Exception):
                raise

    async def _send(self, body: bytes, content_type: str) -> Answer:
        replica = self.deployment.pick()
        if replica is None:
            raise ModelNotReady(
                f"{self.deployment.key!r} has no backend ready", headers={"Retry-After": "5"}
            )
        return await post_bytes(self.app[UPSTREAM], replica, body, content_type)

    async def close(self) -> None:
        if self._linger is not None:
            self._linger.cancel()
        for call in self._queue:
            _settle(call, ModelNotReady("the deployment is being stopped"))
        self._queue.clear()
        if self._tasks:
            await asyncio.wait(self._tasks)


def _split(answer: Answer, sizes: list[int]) -> list[bytes] | None:
    status, payload, content_type = answer
    if status != 200 or not content_type.startswith(_JSON):
        return None
    try:
        data = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(data, dict) or set(data) != {"predictions"}:
        return None
    predictions = data["predictions"]
    if not isinstance(predictions, list) or len(predictions) != sum(sizes):
        return None
    parts, start = [], 0
    for size in sizes:
        parts.append(json.dumps({"predictions": predictions[start : start + size]}).encode())
        start += size
    return parts


def _settle(call: _Call, outcome: Answer | BaseException) -> None:
    if call.future.done():
        return
    if isinstance(outcome, BaseException):
        if isinstance(outcome, GatewayError | asyncio.CancelledError):
            call.future.set_exception(outcome)
        else:
            call.future.set_exception(BackendUnavailable(f"batched call failed: {outcome!r}"))
    else:
        call.future.set_result(outcome)


async def configure_batching(app: web.Application, deployment: Deployment) -> None:
    """Create, update or remove the batcher of a deployment from its options."""
    batchers = app[BATCHERS]
    size = int(deployment.record.options.get("max_batch_size", 1))
    delay = int(deployment.record.options.get("max_batch_delay_ms", 5))
    current = batchers.get(deployment.key)
    if size <= 1:
        if current is not None:
            batchers.pop(deployment.key)
            await current.close()
        return
    if current is not None and current.deployment is deployment:
        current.max_batch_size, current.max_delay = size, delay / 1000.0
        return
    batchers[deployment.key] = Batcher(app, deployment, size, delay)


async def drop_batcher(app: web.Application, key: str) -> None:
    batcher = app[BATCHERS].pop(key, None)
    if batcher is not None:
        await batcher.close()
