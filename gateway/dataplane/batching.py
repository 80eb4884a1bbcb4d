"""Adaptive batching: concurrent calls to one deployment become one backend call.

Opt-in per deployment (`max_batch_size`, `max_batch_delay_ms`). A call is sent
at once when a backend slot is free, so a lone caller never waits for a batch
window; calls that arrive while every slot is busy queue up and leave together
as one `/invocations` call when a slot frees. A caller's deadline (the proxy's
`X-Request-Timeout` window) takes a call out of the queue unsent, so a batch
never holds a call past it. Only bodies that merge without
changing their meaning are batched: `dataframe_split` with the same columns,
`dataframe_records`, and `instances` lists, with no `params`. Anything else
passes through untouched. The predictions are split back in order; if a merged
call fails, its members are retried one by one, so one bad input never fails
its neighbours. A batch of one sends the caller's own bytes and headers.

Bodies over MERGE_MAX_BYTES (64 KiB) are never parsed here: they pass through
unmerged, so no large JSON document is decoded on the event loop; a merged
answer over SPLIT_IN_THREAD_BYTES is split in a worker thread. Every backend
call goes through `call_backend`, so batched traffic is timed, counted in
flight and carries the callers' request ids like any other call.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from gateway.dataplane.backend_call import answer_headers, call_backend
from gateway.dataplane.upstream import UpstreamPool, UpstreamResponse
from gateway.edge.telemetry import KeyMetrics
from gateway.errors import GatewayError, InternalError, ModelNotReady
from supervisor.deployment import Deployment

logger = logging.getLogger(__name__)

_JSON = "application/json"
MERGE_MAX_BYTES = 64 * 1024
SPLIT_IN_THREAD_BYTES = 256 * 1024
# Request ids of a merged call go to the backend as one header, up to this length.
_MAX_IDS_HEADER = 4096


@dataclass(eq=False)
class _Call:
    body: bytes
    content_type: str
    header_lines: str
    request_id: str
    group: tuple[Any, ...]
    rows: list[Any]
    future: asyncio.Future[UpstreamResponse]
    timing: KeyMetrics | None
    queued_at: float = field(default_factory=time.monotonic)


def mergeable(body: bytes, content_type: str) -> tuple[tuple[Any, ...], list[Any]] | None:
    """(merge group, rows) of a body that can share a batch, else None."""
    if not content_type.startswith(_JSON) or len(body) > MERGE_MAX_BYTES:
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


def _merged_header_lines(batch: list[_Call]) -> str:
    """Content type and every member's request id, so backend logs can be correlated."""
    ids = ",".join(c.request_id for c in batch)
    if len(ids) > _MAX_IDS_HEADER:
        ids = ids[: ids.rfind(",", 0, _MAX_IDS_HEADER)] + ",..."
    return f"Content-Type: {_JSON}\r\nX-Request-ID: {ids}\r\n"


class Batcher:
    """Queues mergeable calls of one deployment and dispatches them in batches."""

    def __init__(self, pool: UpstreamPool, deployment: Deployment, max_batch_size: int,
                 max_batch_delay_ms: int) -> None:  # fmt: skip
        self.pool = pool
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

    async def submit(
        self,
        body: bytes,
        content_type: str,
        header_lines: str,
        request_id: str,
        timing: KeyMetrics | None,
    ) -> UpstreamResponse | None:
        """The caller's answer, or None when the body is not mergeable."""
        parsed = mergeable(body, content_type)
        if parsed is None:
            return None
        group, rows = parsed
        future: asyncio.Future[UpstreamResponse] = asyncio.get_running_loop().create_future()
        call = _Call(body, content_type, header_lines, request_id, group, rows, future, timing)
        self._queue.append(call)
        self._dispatch()
        try:
            return await future
        except asyncio.CancelledError:
            # The caller's deadline passed (or it left) while queued: never send it.
            # A call already in a batch stays there; its share of the answer is dropped.
            if call in self._queue:
                self._queue.remove(call)
            raise

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
                _settle(call, await self._send_alone(call))
                return
            self.merged_calls += len(batch)
            answer = await self._send(
                _merged_body(batch[0].group, [r for c in batch for r in c.rows]),
                _merged_header_lines(batch),
                batch[0].timing,
            )
            sizes = [len(c.rows) for c in batch]
            if len(answer.body) > SPLIT_IN_THREAD_BYTES:
                parts = await asyncio.to_thread(_split, answer, sizes)
            else:
                parts = _split(answer, sizes)
            if parts is None:
                # The merged call failed (or its answer cannot be split): every
                # member gets exactly the answer it would have got alone.
                answers = await asyncio.gather(
                    *(self._send_alone(c) for c in batch), return_exceptions=True
                )
                for call, single in zip(batch, answers, strict=True):
                    _settle(call, single)
                return
            headers = answer_headers(answer)
            for call, part in zip(batch, parts, strict=True):
                part_answer = UpstreamResponse(answer.status, headers, part)
                part_answer.model_version = answer.model_version
                _settle(call, part_answer)
        except BaseException as exc:
            for call in batch:
                _settle(call, exc)
            if not isinstance(exc, Exception):
                raise

    async def _send_alone(self, call: _Call) -> UpstreamResponse:
        return await self._send(call.body, call.header_lines, call.timing)

    async def _send(
        self, body: bytes, header_lines: str, timing: KeyMetrics | None
    ) -> UpstreamResponse:
        return await call_backend(
            self.pool, self.deployment, "POST", "/invocations", header_lines, body, timing,
            whole=True,
        )  # fmt: skip

    async def close(self) -> None:
        if self._linger is not None:
            self._linger.cancel()
        for call in self._queue:
            _settle(call, ModelNotReady("the deployment is being stopped"))
        self._queue.clear()
        if self._tasks:
            await asyncio.wait(self._tasks)


def _split(answer: UpstreamResponse, sizes: list[int]) -> list[bytes] | None:
    content_type = next((v for k, v in answer.headers if k.lower() == "content-type"), "")
    if answer.status != 200 or not content_type.startswith(_JSON):
        return None
    try:
        data = json.loads(answer.body)
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


def _settle(call: _Call, outcome: UpstreamResponse | BaseException) -> None:
    if call.future.done():
        return
    if not isinstance(outcome, BaseException):
        call.future.set_result(outcome)
    elif isinstance(outcome, GatewayError | asyncio.CancelledError):
        call.future.set_exception(outcome)
    else:
        # Transport failures arrive as GatewayErrors from call_backend: anything
        # else is a bug of ours, and the caller must not mistake it for a backend
        # problem (a 503 invites retries that fail the same way).
        logger.error("batched call failed with a bug", exc_info=outcome)
        call.future.set_exception(InternalError("batching failed unexpectedly; see the logs"))
