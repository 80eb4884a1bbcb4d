"""Weighted splits and shadow traffic between versions of one model.

`PUT /route/{name}` makes `POST /{name}` (the bare model name) pick a deployed
version by weight, optionally sticky by a header the route names (same value,
same version). A shadow version gets a copy of every successful call after the
caller was answered; its answer is compared with the primary's and logged,
never returned, and a shadow that fails or hangs touches no caller. Routes are
kept in the state store, so they survive a restart.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
import math
import random
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from multidict import CIMultiDictProxy

from gateway.dataplane.backend_call import call_backend
from gateway.dataplane.upstream import UpstreamPool
from gateway.edge.names import check_version
from gateway.errors import BadRequest, GatewayError
from gateway.records.writer import InferenceLogger
from supervisor.deployment import Deployment
from supervisor.state_store import StateStore

logger = logging.getLogger(__name__)

MAX_VERSIONS = 16
MAX_WEIGHT = 1_000_000
MAX_SHADOWS_IN_FLIGHT = 64
SHADOW_TIMEOUT_S = 30.0
# Latency samples kept per version for the comparison's percentiles.
LATENCY_SAMPLES = 2048
# Answers larger than this are not parsed on the loop to compare them.
COMPARE_MAX_BYTES = 256 * 1024
REL_TOLERANCE = 1e-6
ABS_TOLERANCE = 1e-9


@dataclass(frozen=True, slots=True)
class Route:
    """Where the bare name's calls go: versions by weight, and an optional shadow."""

    name: str
    versions: dict[str, int]
    shadow: str | None = None
    sticky_header: str | None = None
    _order: tuple[str, ...] = field(default=(), repr=False)
    _bounds: tuple[int, ...] = field(default=(), repr=False)

    @classmethod
    def build(cls, name: str, body: Any) -> Route:
        """Parse a `PUT /route/{name}` body; a 400 that says what is wrong."""
        if not isinstance(body, dict) or not set(body) <= {"versions", "shadow", "sticky_header"}:
            raise BadRequest(
                'a route is a JSON object: {"versions": {"1": 90, "2": 10}, "shadow": "3",'
                ' "sticky_header": "X-User-Id"} (shadow and sticky_header optional)'
            )
        versions = body.get("versions")
        if not isinstance(versions, dict) or not 1 <= len(versions) <= MAX_VERSIONS:
            raise BadRequest(f"versions must map 1 to {MAX_VERSIONS} versions to weights")
        weights: dict[str, int] = {}
        for version, weight in versions.items():
            check_version(version)
            if isinstance(weight, bool) or not isinstance(weight, int):
                raise BadRequest(f"the weight of version {version} must be a whole number")
            if not 0 <= weight <= MAX_WEIGHT:
                raise BadRequest(f"the weight of version {version} must be 0 to {MAX_WEIGHT}")
            weights[version] = weight
        if sum(weights.values()) <= 0:
            raise BadRequest("at least one version needs a weight above 0")
        shadow = body.get("shadow")
        if shadow is not None:
            if not isinstance(shadow, str):
                raise BadRequest('shadow must be a version number as a string, e.g. "3"')
            check_version(shadow)
        sticky = body.get("sticky_header")
        if sticky is not None and (
            not isinstance(sticky, str) or not sticky or len(sticky) > 64 or not sticky.isascii()
            or any(c in sticky for c in ' :\t\r\n')
        ):  # fmt: skip
            raise BadRequest('sticky_header must be a header name, e.g. "X-User-Id"')
        return cls.of(name, weights, shadow, sticky)

    @classmethod
    def of(cls, name: str, versions: dict[str, int], shadow: str | None,
           sticky_header: str | None) -> Route:  # fmt: skip
        order = tuple(v for v, w in versions.items() if w > 0)
        bounds, total = [], 0
        for version in order:
            total += versions[version]
            bounds.append(total)
        return cls(name, dict(versions), shadow, sticky_header, order, tuple(bounds))

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "versions": self.versions, "shadow": self.shadow,
                "sticky_header": self.sticky_header}  # fmt: skip

    def pick(self, headers: CIMultiDictProxy[str]) -> str:
        """A version by weight; the same sticky header value always gets the same one."""
        total = self._bounds[-1]
        value = headers.get(self.sticky_header) if self.sticky_header else None
        if value is not None:
            point = zlib.crc32(value.encode()) % total
        else:
            point = random.randrange(total)
        return self._order[bisect.bisect_right(self._bounds, point)]


@dataclass(slots=True)
class ArmStats:
    """What one version did under a route, for `GET /route/{name}/comparison`."""

    calls: int = 0
    errors: int = 0
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))
    compared: int = 0
    agreed: int = 0
    dropped: int = 0

    def add(self, status: int, seconds: float) -> None:
        self.calls += 1
        if status >= 400:
            self.errors += 1
        self.latencies_ms.append(seconds * 1000.0)

    def view(self, arm: str) -> dict[str, Any]:
        ordered = sorted(self.latencies_ms)
        body: dict[str, Any] = {
            "arm": arm, "calls": self.calls, "errors": self.errors,
            "p50_ms": _quantile(ordered, 0.5), "p99_ms": _quantile(ordered, 0.99),
        }  # fmt: skip
        if arm == "shadow":
            body["compared"] = self.compared
            body["agreement"] = self.agreed / self.compared if self.compared else None
            body["dropped"] = self.dropped
        return body


def _quantile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)], 3)


class Router:
    """The routes by model name, their statistics, and the shadow calls under way."""

    def __init__(self, store: StateStore | None, table: dict[str, Deployment]) -> None:
        self._store = store
        self._table = table
        self.routes: dict[str, Route] = {}
        self._stats: dict[str, dict[tuple[str, str], ArmStats]] = {}
        self._shadows: set[asyncio.Task[None]] = set()

    async def restore(self) -> None:
        if self._store is None:
            return
        for name, saved in (await self._store.load_routes()).items():
            self.routes[name] = Route.of(
                name, saved["versions"], saved.get("shadow"), saved.get("sticky_header")
            )

    async def put(self, route: Route) -> None:
        """Set a route; every version it names (the shadow too) must be deployed."""
        missing = [v for v in (*route.versions, *filter(None, [route.shadow]))
                   if f"{route.name}-{v}" not in self._table]  # fmt: skip
        if missing:
            raise BadRequest(
                f"version(s) {', '.join(missing)} of {route.name!r} are not deployed: deploy"
                f" them with POST /deploy/{route.name}/<version> before routing to them"
            )
        if self._store is not None:
            await self._store.save_route(route.name, route.as_json())
        self.routes[route.name] = route
        self._stats[route.name] = {}

    async def delete(self, name: str) -> Route | None:
        route = self.routes.pop(name, None)
        self._stats.pop(name, None)
        if route is not None and self._store is not None:
            await self._store.remove_route(name)
        return route

    def stats(self, name: str, version: str, arm: str) -> ArmStats:
        by_arm = self._stats.setdefault(name, {})
        found = by_arm.get((version, arm))
        if found is None:
            found = by_arm[(version, arm)] = ArmStats()
        return found

    def comparison(self, name: str) -> dict[str, Any]:
        route = self.routes[name]
        by_arm = sorted(self._stats.get(name, {}).items())
        versions = [{"version": version, **stats.view(arm)} for (version, arm), stats in by_arm]
        return {"route": route.as_json(), "versions": versions}

    def shadow(
        self,
        route: Route,
        pool: UpstreamPool,
        log: InferenceLogger | None,
        body: bytes,
        content_type: str,
        header_lines: str,
        primary: bytes | None,
        request_id: str,
    ) -> None:
        """Send a copy of an answered call to the route's shadow, in the background."""
        assert route.shadow is not None
        stats = self.stats(route.name, route.shadow, "shadow")
        if len(self._shadows) >= MAX_SHADOWS_IN_FLIGHT:
            stats.dropped += 1  # never let a slow shadow pile up work or memory
            return
        work = self._shadow(
            route, stats, pool, log, body, content_type, header_lines, primary, request_id
        )
        task = asyncio.create_task(work)
        self._shadows.add(task)
        task.add_done_callback(self._shadows.discard)

    async def _shadow(
        self,
        route: Route,
        stats: ArmStats,
        pool: UpstreamPool,
        log: InferenceLogger | None,
        body: bytes,
        content_type: str,
        header_lines: str,
        primary: bytes | None,
        request_id: str,
    ) -> None:
        assert route.shadow is not None
        await asyncio.sleep(0)  # let the caller's answer go out first
        deployment = self._table.get(f"{route.name}-{route.shadow}")
        started = time.perf_counter()
        if deployment is None:
            stats.add(503, 0.0)
            return
        try:
            async with asyncio.timeout(SHADOW_TIMEOUT_S):
                answer = await call_backend(
                    pool, deployment, "POST", "/invocations", header_lines, body, None, whole=True
                )
        except (GatewayError, TimeoutError) as exc:
            stats.add(getattr(exc, "status", 504), time.perf_counter() - started)
            return
        except Exception:
            logger.exception("shadow call to %s failed", deployment.key)
            stats.add(500, time.perf_counter() - started)
            return
        stats.add(answer.status, time.perf_counter() - started)
        if answer.status >= 300:
            return
        if log is not None:
            record = deployment.record
            log.submit(record.model_name, record.version, content_type, body, answer.body,
                       request_id=request_id, arm="shadow")  # fmt: skip
        if primary is not None:
            verdict = agree(primary, answer.body)
            if verdict is not None:
                stats.compared += 1
                stats.agreed += verdict

    async def close(self) -> None:
        for task in list(self._shadows):
            task.cancel()
        if self._shadows:
            await asyncio.wait(self._shadows)


def _predictions(body: bytes) -> Any:
    data = json.loads(body)
    if isinstance(data, dict) and "predictions" in data:
        return data["predictions"]
    return data


def agree(primary: bytes, shadow: bytes) -> bool | None:
    """Whether two answers predict the same (labels exactly, numbers within a
    tolerance); None when they cannot be compared here."""
    if len(primary) > COMPARE_MAX_BYTES or len(shadow) > COMPARE_MAX_BYTES:
        return None
    try:
        return _same(_predictions(primary), _predictions(shadow))
    except (ValueError, RecursionError):
        return None


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(a, b, rel_tol=REL_TOLERANCE, abs_tol=ABS_TOLERANCE)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)
