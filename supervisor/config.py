"""Supervision settings and the event hook, shared by the manager and its keepers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from supervisor.deployment import Deployment, Replica

EventListener = Callable[[str, Deployment, Replica], None]
"""Called with "started", "restarted", "unhealthy", "fatal" or "stopped"."""

HungHook = Callable[[str, int, str], object]
"""Called with (host, port, reason) when a replica is declared hung, before its stop."""


@dataclass(frozen=True, slots=True)
class SupervisorConfig:
    """Timing and limits of supervision; built by the gateway from its settings."""

    deploy_timeout: float = 120.0
    stop_timeout: float = 10.0
    drain_timeout: float = 10.0
    health_interval: float = 5.0
    """Seconds between liveness pings, on a fixed cadence."""
    health_timeout: float = 2.0
    """Seconds a ping may take (a liveness ping at most `health_interval`), so a hung
    backend is found within health_interval x health_failures + health_timeout."""
    health_failures: int = 3
    """Missed pings in a row that make a backend hung. A failed ping is not a miss
    while the backend shows signs of life: see `Keeper._watch`."""
    hung_stop_timeout: float = 1.0
    """Grace between SIGTERM and SIGKILL for a hung backend: it answered nothing for
    health_failures pings, so its stop is not worth the full stop_timeout."""
    on_hung: HungHook | None = None
    """Fails the calls waiting on a hung backend at once (the gateway's upstream pool),
    instead of leaving them to its stop or their own timeout."""
    max_start_retries: int = 10
    backoff_cap: float = 30.0
    stable_after: float = 60.0
    ready_poll_interval: float = 0.1
