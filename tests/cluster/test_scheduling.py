"""Where a replica goes and what it asks for, without a cluster (runs in every suite).

The node lists have the shape `ray.nodes()` returns; the Ray tests check the
same choices on a real cluster.
"""

from __future__ import annotations

from typing import Any

import pytest

from supervisor.placement.ray_scheduling import ResourceRequest, Unschedulable, choose_node


def node(node_id: str, alive: bool = True, **resources: float) -> dict[str, Any]:
    return {"NodeID": node_id, "Alive": alive, "Resources": resources}


HEAD = node("head", memory=8 * 2**30)  # no CPU: nothing of ours lands there
A = node("a", CPU=4, memory=8 * 2**30, zone_a=1, models=2)
B = node("b", CPU=4, memory=8 * 2**30, zone_b=1, models=2)
NODES = [HEAD, A, B]


def test_replicas_of_one_deployment_spread_over_the_nodes() -> None:
    request = ResourceRequest()
    assert choose_node(request, NODES, replicas_on={"a": 1}, load={}) == "b"
    assert choose_node(request, NODES, replicas_on={"b": 1}, load={}) == "a"
    # Same spread, then the node with fewer backends of other deployments wins.
    assert choose_node(request, NODES, replicas_on={"a": 1, "b": 1}, load={"a": 5, "b": 2}) == "b"


def test_a_node_that_just_lost_a_backend_comes_last() -> None:
    request = ResourceRequest()
    assert choose_node(request, NODES, replicas_on={}, load={}, avoid={"a"}) == "b"
    assert choose_node(request, [HEAD, A], replicas_on={}, load={}, avoid={"a"}) == "a"


def test_dead_nodes_and_nodes_without_the_resource_are_never_chosen() -> None:
    pinned = ResourceRequest(custom={"zone_b": 0.5})
    assert choose_node(pinned, NODES, replicas_on={"b": 3}, load={}) == "b"
    dead_b = node("b", alive=False, CPU=4, zone_b=1)
    with pytest.raises(Unschedulable, match=r"zone_b 0.5 \(a node has none\)"):
        choose_node(pinned, [HEAD, A, dead_b], replicas_on={}, load={})


@pytest.mark.parametrize(
    ("request_", "why"),
    [
        (ResourceRequest(num_cpus=8), "CPU 8 (a node has at most 4)"),
        (ResourceRequest(memory_mb=16 * 1024), "memory 16384 MiB (a node has at most 8192 MiB)"),
        (ResourceRequest(custom={"GPU": 1}), "GPU 1 (a node has none)"),
        (ResourceRequest(custom={"zone_a": 1, "zone_b": 1}), "no single node has all of them"),
    ],
)
def test_a_request_no_node_can_hold_says_what_is_missing(
    request_: ResourceRequest, why: str
) -> None:
    with pytest.raises(Unschedulable) as raised:
        choose_node(request_, NODES, replicas_on={}, load={})
    assert "no node of the Ray cluster can hold a replica asking for" in str(raised.value)
    assert why in str(raised.value)


def test_no_live_node() -> None:
    with pytest.raises(Unschedulable, match="no live node"):
        choose_node(ResourceRequest(), [node("a", alive=False, CPU=4)], replicas_on={}, load={})


def test_a_request_from_deployment_options() -> None:
    request = ResourceRequest.from_options(
        {"num_cpus": 0.5, "memory_mb": 512, "resources": {"models": 1, "GPU": 1}}
    )
    assert request.totals() == {"models": 1.0, "GPU": 1.0, "CPU": 0.5, "memory": 512 * 2**20}
    assert request.actor_options() == {
        "num_cpus": 0.5, "num_gpus": 1.0, "resources": {"models": 1.0}, "memory": 512 * 2**20,
    }  # fmt: skip
    assert ResourceRequest.from_options({}) == ResourceRequest(num_cpus=1.0)
    # num_cpus=0 reserves no CPU: such a replica may run on a node without CPUs.
    assert choose_node(ResourceRequest(num_cpus=0), [HEAD], replicas_on={}, load={}) == "head"
