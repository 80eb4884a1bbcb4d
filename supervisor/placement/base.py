"""The placement contract: start a backend, watch it, stop it, find it again.

The manager drives it and keeps everything else: the state machine, readiness
and liveness probes over HTTP, backoff, flap detection, drain, replace and
scale. tests/supervisor/test_placement_contract.py checks an implementation
against this contract.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence, Set

from supervisor.state_store import DeploymentRecord, SavedBackend


class BackendHandle(abc.ABC):
    """One started backend: where it listens, and how to watch and stop it."""

    host: str
    port: int
    node: str
    """Where it runs, e.g. "local" or a Ray node id."""
    ref: str
    """Opaque to the manager, saved in the state file: what `attach` needs to find it."""
    pid: int | None = None
    """The process id when it runs on this machine (shown to operators), else None."""

    @property
    def endpoint(self) -> str:
        """The base URL of its HTTP server."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    @abc.abstractmethod
    def alive(self) -> bool:
        """False once the backend has exited or was stopped."""

    @abc.abstractmethod
    async def wait_exit(self) -> int | str:
        """Wait until the backend ends: its exit code, or a reason when there is none.

        May be called more than once, and after the end; it never raises.
        """

    @abc.abstractmethod
    async def stop(self, grace: float) -> None:
        """Ask it to stop, force it after `grace` seconds; return once it is gone
        and whatever it held (its port) is free. Idempotent."""

    @abc.abstractmethod
    async def log_tail(self, lines: int = 25) -> str:
        """Its last output lines, also after it ended ("" when there is none)."""


class Placement(abc.ABC):
    """Runs backends for deployment replicas somewhere."""

    name: str
    outlives_gateway: bool = False
    """Whether its backends keep running when the gateway stops, for the next boot
    to `attach` to; the manager's close then leaves them running."""

    @abc.abstractmethod
    async def reserve(self, record: DeploymentRecord, replicas: Sequence[int]) -> None:
        """Claim what these replicas need before any starts, all or none.

        Called after the manager has written the replicas' rows; deleting a row
        releases what was claimed on it. Raises NoFreePort when out of room.
        """

    @abc.abstractmethod
    async def start(self, record: DeploymentRecord, replica: int) -> BackendHandle:
        """Start one backend for `record`'s replica; return once it is launched.

        It need not be ready: the manager probes `/ping` on the endpoint. Raises
        BackendStartError with the reason when it cannot be launched. Cancelling
        the call leaves nothing running.
        """

    @abc.abstractmethod
    async def attach(
        self, record: DeploymentRecord, replica: int, saved: SavedBackend
    ) -> BackendHandle | None:
        """After a gateway restart: the backend `saved` describes, if it still runs
        and can be used again; None means "start a new one" (and anything left
        over from the old one is cleaned up first)."""

    @abc.abstractmethod
    async def sweep(self, wanted: Set[tuple[str, int]]) -> None:
        """Stop every backend this placement runs whose (key, replica) is not wanted."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the placement's own resources (the manager stops backends first)."""
