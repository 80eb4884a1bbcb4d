"""Where backends run: the placement the settings choose, and what only some can tell.

The supervisor defines the contract (supervisor/placement/base.py); this module
picks an implementation and gives it what it needs from the gateway's settings.
"""

from __future__ import annotations

from gateway.deploy.launchers import Launcher
from gateway.settings import Settings
from supervisor.placement.base import Placement
from supervisor.placement.local import LocalPlacement
from supervisor.state_store import StateStore


def make_placement(settings: Settings, store: StateStore, launcher: Launcher) -> Placement:
    """Local child processes on the configured port range (the default)."""
    return LocalPlacement(
        store,
        launcher.build,
        settings.backend_log_dir,
        port_range=settings.port_range,
        stop_timeout=settings.stop_timeout,
    )


async def free_ports(placement: Placement) -> int:
    """Ports of the local range nobody holds; 0 for a placement without a local range."""
    if isinstance(placement, LocalPlacement):
        return await placement.count_free_ports()
    return 0
