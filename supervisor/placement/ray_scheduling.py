"""What a replica asks of a Ray cluster, and which node should run it.

Pure functions over the node list `ray.nodes()` returns, so they are tested
without a cluster. Ray alone would leave a request no node can ever satisfy
pending for ever, and its default scheduler packs actors onto one node; the
placement checks feasibility first and pins each replica to a node it picks.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from typing import Any

DEFAULT_NUM_CPUS = 1.0
"""CPUs a replica reserves unless its deployment asks otherwise: one scoring worker."""


class Unschedulable(ValueError):
    """No node of the cluster can ever hold the request."""


@dataclass(frozen=True, slots=True)
class ResourceRequest:
    """The resources one replica reserves on its node while it runs."""

    num_cpus: float = DEFAULT_NUM_CPUS
    memory_mb: int | None = None
    custom: dict[str, float] = field(default_factory=dict)
    """Custom resources by name, e.g. {"models": 1}; "GPU" becomes Ray's num_gpus."""

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> ResourceRequest:
        """The request a deployment record's options carry (num_cpus, memory_mb, resources)."""
        num_cpus = options.get("num_cpus")
        memory_mb = options.get("memory_mb")
        return cls(
            num_cpus=DEFAULT_NUM_CPUS if num_cpus is None else float(num_cpus),
            memory_mb=None if memory_mb is None else int(memory_mb),
            custom={str(k): float(v) for k, v in (options.get("resources") or {}).items()},
        )

    def totals(self) -> dict[str, float]:
        """The request in the units of a node's `Resources` (memory in bytes)."""
        need = {name: amount for name, amount in self.custom.items() if amount > 0}
        if self.num_cpus > 0:
            need["CPU"] = self.num_cpus
        if self.memory_mb:
            need["memory"] = float(self.memory_mb) * 1024 * 1024
        return need

    def actor_options(self) -> dict[str, Any]:
        """Keyword arguments of `ActorClass.options` that reserve this request."""
        custom = dict(self.custom)
        options: dict[str, Any] = {"num_cpus": self.num_cpus}
        gpus = custom.pop("GPU", None)
        if gpus is not None:
            options["num_gpus"] = gpus
        if custom:
            options["resources"] = custom
        if self.memory_mb:
            options["memory"] = self.memory_mb * 1024 * 1024
        return options

    def __str__(self) -> str:
        return ", ".join(
            f"{name} {_amount(name, amount)}" for name, amount in self.totals().items()
        )


def alive_nodes(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [n for n in nodes if n.get("Alive")]


def fits(request: ResourceRequest, node: Mapping[str, Any]) -> bool:
    """Whether the node's total resources can ever hold the request."""
    total = node.get("Resources", {})
    return all(total.get(name, 0.0) >= amount for name, amount in request.totals().items())


def choose_node(
    request: ResourceRequest,
    nodes: list[dict[str, Any]],
    replicas_on: Mapping[str, int],
    load: Mapping[str, int],
    avoid: Set[str] = frozenset(),
) -> str:
    """The node id a new replica should run on.

    Among the live nodes that can hold the request, the one with the fewest
    replicas of the same deployment (`replicas_on`) wins, so replicas spread;
    ties go to the node with the fewest backends of ours (`load`). Nodes in
    `avoid` (one of ours just vanished from them, and the cluster may not know
    yet) come last. Raises Unschedulable with what the nodes offer instead.
    """
    candidates = [n for n in alive_nodes(nodes) if fits(request, n)]
    if not candidates:
        raise Unschedulable(_why_unschedulable(request, alive_nodes(nodes)))

    def rank(node: Mapping[str, Any]) -> tuple[bool, int, int, str]:
        node_id = str(node["NodeID"])
        return (node_id in avoid, replicas_on.get(node_id, 0), load.get(node_id, 0), node_id)

    return str(min(candidates, key=rank)["NodeID"])


def _why_unschedulable(request: ResourceRequest, nodes: list[dict[str, Any]]) -> str:
    if not nodes:
        return "the Ray cluster has no live node"
    lacking = []
    for name, amount in request.totals().items():
        most = max(n.get("Resources", {}).get(name, 0.0) for n in nodes)
        if most < amount:
            offer = f"at most {_amount(name, most)}" if most else "none"
            lacking.append(f"{name} {_amount(name, amount)} (a node has {offer})")
    detail = f"not enough {'; '.join(lacking)}" if lacking else "no single node has all of them"
    return (
        f"no node of the Ray cluster can hold a replica asking for {request}: {detail}."
        " Ask for less, or add a node that has it"
    )


def _amount(name: str, amount: float) -> str:
    if name == "memory":
        return f"{amount / (1024 * 1024):.0f} MiB"
    return f"{amount:g}"
