"""Supervision settings and the event hook, shared by the manager and its keepers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from supervisor.deployment import Deployment, Replica

EventListener = Callable[[str, Deployment, Replica], None]
"""Called with "started", "restarted", "unhealthy", "fatal" or "stopped"."""


@dataclass(frozen=True, slots=True)
class SupervisorConfig:
    """Timing and limits of supervision; built by the gateway from its settings."""

    log_dir: Path | None = None
    """Only for a Manager given a bare command factory (it builds a LocalPlacement)."""
    host: str = "127.0.0.1"
    """Same: the host that LocalPlacement binds backends to."""
    deploy_timeout: float = 120.0
    stop_timeout: float = 10.0
    drain_timeout: float = 10.0
    health_interval: float = 5.0
    health_timeout: float = 2.0
    health_failures: int = 3
    max_start_retries: int = 10
    backoff_cap: float = 30.0
    stable_after: float = 60.0
    ready_poll_interval: float = 0.1
