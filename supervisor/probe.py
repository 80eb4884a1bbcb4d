"""Readiness and liveness probes against a backend's /ping."""

from __future__ import annotations

import aiohttp


async def ping(session: aiohttp.ClientSession, url: str, timeout: float) -> bool:
    """True when `url` answers 200 within `timeout` seconds."""
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            await resp.read()
            return resp.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False
