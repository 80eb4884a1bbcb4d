"""Across hosts: the gateway on host A, its backend on host B, the link between them.

Two network namespaces joined by a veth pair stand for two machines (see
two_hosts.py): `ray start --head` on A, a worker with `--node-ip-address` on
B, an `mlflow server` on A that B downloads the model from, and the gateway on
A. A deployment pinned to B by its custom resource is called through the
gateway, across the link.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.cluster.harness import needs_private_netns
from tests.cluster.two_hosts import IP_A, IP_B, TwoHosts, why_not
from tests.support import ONE_ROW, processes_mentioning

pytestmark = [
    *needs_private_netns,
    pytest.mark.skipif(why_not() is not None, reason=why_not() or ""),
]


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[TwoHosts]:
    two = TwoHosts(tmp_path / "hosts").up()
    try:
        yield two
    finally:
        two.down()


def test_a_backend_pinned_to_the_other_host_is_called_through_the_gateway(
    hosts: TwoHosts,
) -> None:
    hosts.start_ray()
    registry = hosts.start_mlflow()
    hosts.register(registry, "wine-quality")
    gateway = hosts.start_gateway("gateway", registry, GATEWAY_DEPLOY_TIMEOUT="150")

    pinned = quote('{"host_b": 1}')
    status, body = hosts.http("POST", f"{gateway}/deploy/wine-quality/1?resources={pinned}")
    assert status == 201, (body, hosts.log("gateway"))
    [replica] = body["replicas"] if "replicas" in body else hosts.http(
        "GET", f"{gateway}/get_deployed_models")[1]["wine-quality-1"]["replicas"]  # fmt: skip
    assert replica["endpoint"].startswith(f"http://{IP_B}:")

    # The scoring server is a process of host B, listening on B's address.
    port = replica["endpoint"].rsplit(":", 1)[1]
    [pid] = processes_mentioning(f"--host {IP_B} --port {port}")
    assert os.stat(f"/proc/{pid}/ns/net").st_ino == hosts.netns_inode(hosts.b)

    for _ in range(3):
        status, answer = hosts.http("POST", f"{gateway}/wine-quality-1", ONE_ROW)
        assert status == 200, answer
        assert len(answer["predictions"]) == 1
    status, _ = hosts.http("POST", f"{gateway}/undeploy/wine-quality-1")
    assert status == 200
    assert f"http://{IP_A}" in gateway
