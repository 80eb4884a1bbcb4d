"""What a deploy call may ask for, and the limits the code enforces.

The handlers validate against these constants and the OpenAPI document is
built from them, so the document cannot drift from what the gateway accepts.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from gateway.edge.names import alias_key, deployment_key

MAX_REPLICAS = 16
MAX_BATCH_SIZE = 4096
MAX_BATCH_DELAY_MS = 10_000
DEFAULT_BATCH_DELAY_MS = 5
# How MLflow builds a model's environment; only `local` runs in the gateway's own.
ENV_MANAGERS = ("local", "virtualenv", "uv", "conda")
BATCHING_OPTIONS = ("max_batch_size", "max_batch_delay_ms")
# Traffic management: admission control (per replica slots, a bounded queue) and
# scale to zero; changeable in place like batching.
TRAFFIC_OPTIONS = ("max_concurrency", "max_queue", "idle_timeout_s")
MAX_CONCURRENCY = 4096
MAX_QUEUE = 100_000
DEFAULT_MAX_QUEUE = 100
MAX_IDLE_TIMEOUT_S = 7 * 24 * 3600
# What a replica reserves on a Ray node (GATEWAY_PLACEMENT=ray); Ray's scheduler reads them.
RESOURCE_OPTIONS = ("num_cpus", "memory_mb", "resources")
MAX_NUM_CPUS = 512
MAX_MEMORY_MB = 16 * 1024 * 1024  # 16 TiB
MAX_CUSTOM_RESOURCES = 16
MAX_RESOURCE_NAME = 64


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
    resources: dict[str, Any] = field(default_factory=dict)
    """Ray resource requests (RESOURCE_OPTIONS), carried in the record's options."""
    traffic: dict[str, int] = field(default_factory=dict)
    """TRAFFIC_OPTIONS given on the call; 0 turns one off."""

    @property
    def key(self) -> str:
        if self.alias is not None:
            return alias_key(self.name, self.alias)
        assert self.version is not None
        return deployment_key(self.name, self.version)


def parse_num_cpus(raw: str) -> float:
    """`?num_cpus=`: CPUs a replica reserves (0 reserves none; above 1, whole CPUs)."""
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"num_cpus must be a number, not {raw!r}") from None
    problem = _amount_problem(value, MAX_NUM_CPUS)
    if problem:
        raise ValueError(f"num_cpus {problem}")
    return value


def parse_resources(raw: str) -> dict[str, float]:
    """`?resources=`: custom Ray resources as a JSON object, e.g. {"models": 1}."""
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    if not isinstance(value, dict) or not value:
        raise ValueError(
            'resources must be a JSON object of resource names and amounts, e.g. {"models": 1}'
        )
    if len(value) > MAX_CUSTOM_RESOURCES:
        raise ValueError(f"resources may name at most {MAX_CUSTOM_RESOURCES} resources")
    parsed: dict[str, float] = {}
    for name, amount in value.items():
        if not name or len(name) > MAX_RESOURCE_NAME:
            raise ValueError(f"a resource name must have 1 to {MAX_RESOURCE_NAME} characters")
        if name in ("CPU", "memory"):
            option = "num_cpus" if name == "CPU" else "memory_mb"
            raise ValueError(f"ask for {name} with ?{option}=, not in resources")
        if name == "object_store_memory" or name.startswith("node:"):
            raise ValueError(f"{name!r} cannot be requested")
        if isinstance(amount, bool) or not isinstance(amount, int | float):
            raise ValueError(f"the amount of resource {name!r} must be a number")
        problem = _amount_problem(float(amount), 1e6)
        if problem:
            raise ValueError(f"the amount of resource {name!r} {problem}")
        parsed[name] = float(amount)
    return parsed


def _amount_problem(value: float, most: float) -> str | None:
    if not math.isfinite(value) or not 0 <= value <= most:
        return f"must be between 0 and {most:g}"
    if value > 1 and value != int(value):
        return "above 1 must be a whole number (Ray's rule)"
    return None
