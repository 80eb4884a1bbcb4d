"""Readiness and liveness probes: a backend's /ping, and the CPU its processes use."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

_PROC = Path("/proc")


async def ping(session: aiohttp.ClientSession, url: str, timeout: float) -> bool:
    """True when `url` answers 200 within `timeout` seconds."""
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            await resp.read()
            return resp.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def cpu_ticks(pid: int | None) -> int | None:
    """CPU time (clock ticks) that process `pid` and its descendants have used so far.

    None when it cannot be known: no local pid (the backend runs elsewhere), no
    /proc (not Linux), or the process is gone. Liveness compares two readings: a
    backend whose CPU moves while its calls are in flight is working, not hung.
    """
    if pid is None:
        return None
    return await asyncio.to_thread(_tree_ticks, pid)


def _tree_ticks(pid: int) -> int | None:
    total, todo = 0, [pid]
    seen: set[int] = set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        ticks = _own_ticks(current)
        if ticks is None:
            if current == pid:
                return None
            continue  # a descendant that just ended
        total += ticks
        todo.extend(_children(current))
    return total


def _own_ticks(pid: int) -> int | None:
    try:
        stat = (_PROC / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    # Fields 14 and 15 (utime, stime) count from the ")" that closes the command name.
    fields = stat.rsplit(b")", 1)[1].split()
    try:
        return int(fields[11]) + int(fields[12])
    except (IndexError, ValueError):
        return None


def _children(pid: int) -> list[int]:
    """Child pids of every thread of `pid` (empty where the kernel does not list them)."""
    found: list[int] = []
    try:
        tasks = list((_PROC / str(pid) / "task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            found.extend(int(c) for c in (task / "children").read_text().split())
        except (OSError, ValueError):
            continue
    return found
