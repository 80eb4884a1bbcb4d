"""The soak's schedule: one window per fault, each injected at its start and
undone (or recovered from) before its end, under the steady load.

An action gets the soak and its window's length and returns what it saw (pids,
recovery times, counter deltas); it must finish within its window plus
`OVERRUN`, or it is cancelled. Windows scale with `--minutes`, down to a
minimum that still lets the fault happen and the gateway recover.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bench.soak_faults import hold_store_lock, idle_flood, slowloris
from bench.soak_procs import alive, usage, wait_gone

if TYPE_CHECKING:
    from bench.soak import Soak

OVERRUN = 90.0  # seconds an action may run past its window (a slow restart)
LEAD = 2.0  # seconds of load in a window before its fault, so calls caught by it count there
SLOWLORIS_SOCKETS = 40
IDLE_SOCKETS = 1000

Action = Callable[["Soak", "Window"], Coroutine[Any, Any, dict[str, Any]]]


@dataclass
class Window:
    name: str
    seconds: float
    hold: float  # how long the fault itself lasts, where it has a length
    what: str  # one line for the table
    minimum: float  # the shortest this window may be


async def steady(soak: Soak, w: Window) -> dict[str, Any]:
    return {}


async def backend_kill9(soak: Soak, w: Window) -> dict[str, Any]:
    pid = (await soak.replica(0))["pid"]
    os.kill(pid, signal.SIGKILL)
    back = await soak.wait_replaced(0, pid, w.seconds + OVERRUN)
    return {"killed_pid": pid, "replica_back_after_s": back}


async def backend_sigstop(soak: Soak, w: Window) -> dict[str, Any]:
    pid = (await soak.replica(0))["pid"]
    os.kill(pid, signal.SIGSTOP)
    replaced = await soak.wait_replaced(0, pid, w.hold)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)  # the supervisor may have killed it already
    if replaced is None:
        replaced = await soak.wait_replaced(0, pid, w.seconds + OVERRUN - w.hold)
    gone = not await asyncio.to_thread(wait_gone, [pid], 15)
    return {"stopped_pid": pid, "stopped_for_s": w.hold, "replica_replaced_after_s": replaced,
            "stopped_process_gone": gone}  # fmt: skip


async def store_lock(soak: Soak, w: Window) -> dict[str, Any]:
    before = await soak.log_stats()
    held = await asyncio.to_thread(hold_store_lock, soak.inference_db, w.hold)
    drained = await soak.wait_drained(w.seconds + OVERRUN)
    return {
        **held,
        "log_drained_after_unlock_s": drained,
        **soak.delta(before, await soak.log_stats()),
    }


async def disk_full(soak: Soak, w: Window) -> dict[str, Any]:
    if soak.disk is None:
        return {"skipped": soak.disk_skipped}
    before = await soak.log_stats()
    filled = await asyncio.to_thread(soak.disk.fill)
    free_after_fill = soak.disk.free_bytes()
    held = await asyncio.to_thread(hold_store_lock, soak.inference_db, w.hold)
    drained = await soak.wait_drained(w.seconds + OVERRUN)
    soak.disk.free()
    return {"tmpfs_mb": soak.disk.size_mb, "filler_bytes": filled,
            "free_bytes_after_fill": free_after_fill, **held,
            "log_drained_after_unlock_s": drained,
            **soak.delta(before, await soak.log_stats())}  # fmt: skip


async def replace_scale(soak: Soak, w: Window) -> dict[str, Any]:
    steps = {}
    for name, method, path in (
        ("replace", "POST", f"/deploy/{soak.model}/1?replace=true"),
        ("scale_to_3", "POST", f"/scale/{soak.key}?replicas=3"),
        ("scale_to_2", "POST", f"/scale/{soak.key}?replicas=2"),
    ):
        started = time.monotonic()
        status, body = await soak.api(method, path)
        steps[name] = {"status": status, "seconds": round(time.monotonic() - started, 2)}
        if status >= 300:
            steps[name]["error"] = body
        await asyncio.sleep(min(3.0, w.seconds / 10))
    return steps


async def slowloris_window(soak: Soak, w: Window) -> dict[str, Any]:
    seconds = w.seconds - LEAD - 1
    return await slowloris(soak.host, soak.port, f"/{soak.key}", SLOWLORIS_SOCKETS, seconds)


async def idle_window(soak: Soak, w: Window) -> dict[str, Any]:
    # Our own open-files limit bounds the flood (the soak raised it to the hard limit).
    sockets = min(IDLE_SOCKETS, resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 256)
    return await idle_flood(soak.host, soak.port, sockets, w.seconds - LEAD - 1)


async def gateway_kill9(soak: Soak, w: Window) -> dict[str, Any]:
    gw = soak.gateway
    soak.resources["gateway_before_kill"] = usage(gw.pid)
    soak.resources["backends_before_kill"] = await soak.backend_usage()
    soak.lost_before_kill = (await soak.log_stats()).get("lost", 0)
    backends = [r["pid"] for r in (await soak.deployment())["replicas"] if r.get("pid")]
    old_pid = gw.pid
    killed_at, exit_code = await asyncio.to_thread(gw.kill9)
    soak.kill_at = killed_at - soak.t0
    orphans = await asyncio.to_thread(wait_gone, backends, 5)
    started = time.monotonic()
    await asyncio.to_thread(gw.start)
    listening = await soak.wait_health(60)
    listening_s = None if listening is None else round(time.monotonic() - started, 2)
    soak.lost_at_restart = soak.lost_at_start = (await soak.log_stats()).get("lost", 0)
    ready = await soak.wait_running(w.seconds + OVERRUN)
    ready_s = None if ready is None else round(time.monotonic() - started, 2)
    soak.resources["gateway_after_restart"] = usage(gw.pid)
    return {"killed_pid": old_pid, "exit_code": exit_code, "backends_of_killed": backends,
            "backends_alive_5s_after_kill": [p for p in orphans if alive(p)],
            "new_pid": gw.pid, "answering_health_after_restart_s": listening_s,
            "deployment_running_after_restart_s": ready_s}  # fmt: skip


def schedule(minutes: float) -> list[tuple[Window, Action]]:
    """The windows, scaled so that the load runs about `minutes`."""
    table: list[tuple[str, float, float, float, str, Action]] = [
        # name, base seconds, minimum seconds, fault hold (base), what
        ("steady", 30, 10, 0, "steady load, no fault", steady),
        ("backend_kill9", 30, 15, 0, "kill -9 one backend replica", backend_kill9),
        ("backend_sigstop", 35, 15, 15, "SIGSTOP one backend replica, SIGCONT later", backend_sigstop),
        ("store_lock", 40, 15, 15, "BEGIN EXCLUSIVE on inference.db (spills to the spool)", store_lock),
        ("disk_full", 45, 20, 15, "the log's tmpfs filled + store locked, then freed", disk_full),
        ("replace_scale", 40, 25, 0, "replace=true, scale to 3, scale to 2", replace_scale),
        ("slowloris", 30, 20, 0, f"{SLOWLORIS_SOCKETS} sockets sending headers byte by byte", slowloris_window),
        ("idle_flood", 30, 20, 0, f"{IDLE_SOCKETS} idle connections", idle_window),
        ("gateway_kill9", 50, 30, 0, "kill -9 the gateway, start it again", gateway_kill9),
        ("steady_end", 30, 10, 0, "steady load, no fault", steady),
    ]  # fmt: skip
    factor = minutes * 60 / sum(row[1] for row in table)
    return [
        (
            Window(
                name, max(low, base * factor), max(5.0, hold * factor) if hold else 0.0, what, low
            ),
            act,
        )
        for name, base, low, hold, what, act in table
    ]
