"""What a deploy call may ask for, and the limits the code enforces.

The handlers validate against these constants and the OpenAPI document is
built from them, so the document cannot drift from what the gateway accepts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.edge.names import alias_key, deployment_key

MAX_REPLICAS = 16
MAX_BATCH_SIZE = 4096
MAX_BATCH_DELAY_MS = 10_000
DEFAULT_BATCH_DELAY_MS = 5
# How MLflow builds a model's environment; only `local` runs in the gateway's own.
ENV_MANAGERS = ("local", "virtualenv", "uv", "conda")
BATCHING_OPTIONS = ("max_batch_size", "max_batch_delay_ms")


@dataclass(frozen=True, slots=True)
class DeployRequest:
    """One `POST /deploy` call, parsed. None means "not given" (keep what runs).

    Exactly one of `version` and `alias` is set: a deployment serves a fixed
    version under `{name}-{version}`, or follows a registry alias under
    `{name}@{alias}`.
    """

    name: str
    version: str | None = None
    alias: str | None = None
    env_manager: str | None = None
    replicas: int | None = None
    replace: bool = False
    batching: dict[str, int] = field(default_factory=dict)

    @property
    def key(self) -> str:
        if self.alias is not None:
            return alias_key(self.name, self.alias)
        assert self.version is not None
        return deployment_key(self.name, self.version)
