"""In-memory view of a deployment and its replicas, read by the proxy on every call."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from supervisor.errors import InvalidTransition
from supervisor.placement.base import BackendHandle
from supervisor.state_store import DeploymentRecord
from supervisor.states import State, can_transition


@dataclass(eq=False)
class Replica:
    """One backend of a deployment; where it listens follows its latest handle."""

    index: int
    port: int = 0  # 0 until a placement has said where it listens
    host: str = "127.0.0.1"
    state: State = State.STOPPED
    healthy: bool = False
    handle: BackendHandle | None = None
    node: str | None = None
    restarts: int = 0
    started_at: float | None = None
    last_error: str | None = None
    # Requests the proxy has sent and not yet seen answered (least-outstanding balancing).
    in_flight: int = 0
    # Answers (of any status) the gateway has had from its backend. Liveness reads a
    # change as a sign of life: a backend busy with calls may miss pings, yet answer.
    answers: int = 0
    task: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.base_url = f"http://{self.host}:{self.port}"

    def bind(self, handle: BackendHandle) -> None:
        """Route to `handle` from now on (called while the replica is not routable)."""
        self.handle = handle
        self.host, self.port, self.node = handle.host, handle.port, handle.node
        self.base_url = handle.endpoint

    @property
    def routable(self) -> bool:
        return self.state is State.RUNNING and self.healthy

    @property
    def endpoint(self) -> str | None:
        """Where its backend listens, once a placement has started one."""
        return self.base_url if self.handle is not None else None

    @property
    def pid(self) -> int | None:
        """The live local process id, if any."""
        handle = self.handle
        return handle.pid if handle is not None and handle.alive else None

    def transition(self, new: State) -> None:
        if not can_transition(self.state, new):
            raise InvalidTransition(f"replica {self.index}: {self.state} -> {new}")
        self.state = new

    def describe(self) -> dict[str, Any]:
        return {
            "replica": self.index,
            "port": self.port,
            "node": self.node,
            "endpoint": self.endpoint,
            "status": self.state.value,
            "healthy": self.healthy,
            "pid": self.pid,
            "started_at": _iso(self.started_at),
            "restarts": self.restarts,
            "last_error": self.last_error,
        }


@dataclass(eq=False)
class Deployment:
    """A model version the gateway keeps served, with its replicas."""

    record: DeploymentRecord
    replicas: list[Replica] = field(default_factory=list)

    @property
    def key(self) -> str:
        return self.record.key

    def pick(self) -> Replica | None:
        """The routable replica with the fewest requests in flight, or None."""
        best: Replica | None = None
        for replica in self.replicas:
            if replica.routable and (best is None or replica.in_flight < best.in_flight):
                best = replica
        return best

    def pick_other(self, failed: Replica) -> Replica | None:
        """Like `pick`, but never `failed`: where to send a call its replica dropped."""
        best: Replica | None = None
        for replica in self.replicas:
            if (
                replica is not failed
                and replica.routable
                and (best is None or replica.in_flight < best.in_flight)
            ):
                best = replica
        return best

    @property
    def status(self) -> State:
        states = {r.state for r in self.replicas}
        for state in (State.RUNNING, State.STARTING, State.BACKOFF, State.FATAL, State.STOPPING):
            if state in states:
                return state
        return State.STOPPED

    def describe(self) -> dict[str, Any]:
        """The original's `get_deployed_models` entry, extended with every replica."""
        first = self.replicas[0] if self.replicas else None
        first_view = first.describe() if first else {}
        return {
            "model_name": self.record.model_name,
            "version": self.record.version,
            "port": first.port if first else None,
            "run_uuid": self.record.run_uuid,
            "status": self.status.value,
            "pid": first_view.get("pid"),
            "started_at": first_view.get("started_at"),
            "restarts": sum(r.restarts for r in self.replicas),
            "env_manager": self.record.env_manager,
            "created_at": _iso(self.record.created_at),
            "replicas": [r.describe() for r in self.replicas],
        }


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
