"""`make bench` sections for traffic management: load shedding under overload, wake-ups.

- overload: 256 callers against one real model backend (a few hundred calls a second at
  most), with admission control off and then on (`max_concurrency`, `max_queue`). wrk
  cannot tell an admitted call's latency from a shed one's, so a bounded asyncio client
  records each call's status and latency; a shed caller waits the `Retry-After` the
  gateway asked for (capped at 50 ms, as an impatient client would) before its next call.
- wake: seconds from a call to an idle (scaled to zero) deployment until its answer,
  next to a fresh deploy's deploy-to-ready on the same gateway.

These are figures, not tests: nothing fails on a threshold.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path
from typing import Any, Protocol

import aiohttp

OVERLOAD_CALLERS = 256
OVERLOAD_SECONDS = 10.0
SHED_PAUSE_S = 0.05
# Shedding on: one call at a time per replica (the scoring server has one worker) and a
# queue that holds what the backend clears in about 100 ms.
SHEDDING = "max_concurrency=2&max_queue=24"


class _Server(Protocol):
    @property
    def url(self) -> str: ...


class _Bench(Protocol):
    results: list[dict[str, Any]]


class _Setup(Protocol):
    bench: _Bench
    body: dict[str, Path]

    @property
    def nolog(self) -> _Server: ...


MODEL, KEY = "bench-wine", "bench-wine-1"


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


async def _deploy(session: aiohttp.ClientSession, gw: str, query: str) -> float:
    started = time.perf_counter()
    async with session.post(f"{gw}/deploy/{MODEL}/1?{query}") as resp:
        text = await resp.text()
        if resp.status not in (200, 201):
            raise RuntimeError(f"deploy {query!r} failed: {resp.status} {text}")
    return time.perf_counter() - started


async def _overload(gw: str, body: bytes) -> dict[str, Any]:
    """OVERLOAD_CALLERS closed-loop callers for OVERLOAD_SECONDS: latencies by outcome."""
    admitted: list[float] = []
    statuses: dict[str, int] = {}
    deadline = time.perf_counter() + OVERLOAD_SECONDS
    headers = {"Content-Type": "application/json"}
    timeout = aiohttp.ClientTimeout(total=120)
    connector = aiohttp.TCPConnector(limit=OVERLOAD_CALLERS)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def caller() -> None:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                try:
                    async with session.post(f"{gw}/{KEY}", data=body, headers=headers) as resp:
                        await resp.read()
                        status, retry_after = resp.status, resp.headers.get("Retry-After")
                except (aiohttp.ClientError, TimeoutError) as exc:
                    statuses[type(exc).__name__] = statuses.get(type(exc).__name__, 0) + 1
                    continue
                statuses[str(status)] = statuses.get(str(status), 0) + 1
                if 200 <= status < 300:
                    admitted.append(time.perf_counter() - started)
                elif status == 429:
                    await asyncio.sleep(min(SHED_PAUSE_S, float(retry_after or SHED_PAUSE_S)))

        await asyncio.gather(*(caller() for _ in range(OVERLOAD_CALLERS)))
    calls = sum(statuses.values())
    p50, p99 = _quantile(admitted, 0.5), _quantile(admitted, 0.99)
    return {
        "calls": calls,
        "statuses": statuses,
        "admitted_rps": len(admitted) / OVERLOAD_SECONDS,
        "admitted_p50_ms": p50 * 1000 if p50 is not None else None,
        "admitted_p99_ms": p99 * 1000 if p99 is not None else None,
        "shed_share": statuses.get("429", 0) / calls if calls else 0.0,
    }


def section_overload(s: _Setup) -> None:
    print(f"\n== overload: {OVERLOAD_CALLERS} callers against one backend, shedding off vs on")
    gw, body = s.nolog.url, s.body["1row"].read_bytes()

    async def run() -> dict[str, Any]:
        async with aiohttp.ClientSession() as session:
            await _deploy(session, gw, "max_concurrency=0")
            off = await _overload(gw, body)
            await _deploy(session, gw, SHEDDING)
            on = await _overload(gw, body)
            await _deploy(session, gw, "max_concurrency=0")
        return {"off": off, "on": on}

    figures = asyncio.run(run())
    for label, row in figures.items():
        print(
            f"   shedding {label:<3}: {row['calls']} calls, admitted {row['admitted_rps']:.0f}/s,"
            f" p50 {row['admitted_p50_ms'] or 0:.1f} ms, p99 {row['admitted_p99_ms'] or 0:.1f} ms"
            f" of admitted calls, shed {row['shed_share']:.0%}, statuses {row['statuses']}"
        )
    row = {"scenario": "overload, shedding off vs on", "callers": OVERLOAD_CALLERS,
           "seconds": OVERLOAD_SECONDS, "shedding": SHEDDING, **figures}  # fmt: skip
    s.bench.results.append(row)


async def _wake_once(session: aiohttp.ClientSession, gw: str, body: bytes) -> float:
    """Let the deployment go idle, then time one call until its answer."""
    async with asyncio.timeout(120):
        while True:
            async with session.get(f"{gw}/get_deployed_models") as resp:
                if (await resp.json())[KEY]["status"] == "idle":
                    break
            await asyncio.sleep(0.2)
    started = time.perf_counter()
    async with session.post(
        f"{gw}/{KEY}", data=body, headers={"Content-Type": "application/json"}
    ) as resp:
        await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"the wake-up call answered {resp.status}")
    return time.perf_counter() - started


def section_wake(s: _Setup) -> None:
    print("\n== scale to zero: wake-up from idle vs a fresh deploy (median of 3)")
    gw, body = s.nolog.url, s.body["1row"].read_bytes()

    async def run() -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=300)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            fresh, woken = [], []
            for _ in range(3):
                async with session.post(f"{gw}/undeploy/{KEY}") as resp:
                    await resp.read()
                fresh.append(await _deploy(session, gw, "idle_timeout_s=1"))
                woken.append(await _wake_once(session, gw, body))
            await _deploy(session, gw, "idle_timeout_s=0")
        medians = {"deploy_seconds": statistics.median(fresh),
                   "wake_seconds": statistics.median(woken)}  # fmt: skip
        return {**medians, "deploy_seconds_all": fresh, "wake_seconds_all": woken}

    figures = asyncio.run(run())
    ratio = figures["wake_seconds"] / figures["deploy_seconds"]
    print(
        f"   fresh deploy to ready {figures['deploy_seconds']:.2f} s; idle to first answer"
        f" {figures['wake_seconds']:.2f} s (x{ratio:.2f})"
    )
    s.bench.results.append({"scenario": "wake-up vs fresh deploy", **figures, "ratio": ratio})
