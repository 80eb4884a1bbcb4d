"""Resource requests on deploy (?num_cpus=, ?memory_mb=, ?resources=), read by any gateway.

These run in every suite against the session's local gateway: a mistake is a
400 that says what is wrong, and the local placement refuses the requests it
cannot honour instead of ignoring them. Last, the check that refuses a Ray
placement model files only the gateway's host can read.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest
from pydantic import ValidationError

from gateway.deploy import placement as gateway_placement
from gateway.deploy.placement import _download_uri, files_every_node_reads
from gateway.settings import Settings, describe_errors
from supervisor.state_store import DeploymentRecord
from tests.support import Gateway


@pytest.mark.parametrize(
    ("query", "why"),
    [
        ("num_cpus=many", "num_cpus must be a number"),
        ("num_cpus=1.5", "above 1 must be a whole number"),
        ("num_cpus=-1", "num_cpus must be between 0 and 512"),
        ("memory_mb=0", "'memory_mb' must be between 1 and"),
        ("resources=models", "resources must be a JSON object"),
        ("resources={}", "resources must be a JSON object"),
        ('resources={"CPU": 2}', "ask for CPU with ?num_cpus="),
        ('resources={"models": "one"}', "must be a number"),
        ('resources={"models": 2.5}', "above 1 must be a whole number"),
        ('resources={"node:10.0.0.1": 1}', "cannot be requested"),
    ],
)
def test_a_bad_resource_request_is_a_400_that_says_why(
    gateway: Gateway, query: str, why: str
) -> None:
    reply = gateway.post(f"/deploy/wine-quality/1?{quote(query, safe='=&')}")
    assert reply.status == 400, reply.body
    assert reply.json()["error"] == "bad_request" and why in reply.json()["detail"]


@pytest.mark.parametrize(
    "query", ["num_cpus=1", "memory_mb=512", 'resources={"models": 1}', "num_cpus=0&memory_mb=64"]
)
def test_the_local_placement_refuses_resource_requests(gateway: Gateway, query: str) -> None:
    reply = gateway.post(f"/deploy/wine-quality/1?{quote(query, safe='=&')}")
    assert reply.status == 400, reply.body
    detail = reply.json()["detail"]
    assert "set GATEWAY_PLACEMENT=ray" in detail and "own host" in detail
    assert gateway.deployment("wine-quality-1")["status"] == "running"  # type: ignore[index]


async def test_model_files_only_this_host_has_are_refused_on_a_multi_node_cluster(
    registry: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Ray placement's check before each start (gateway/deploy/placement.py)."""
    record = DeploymentRecord("wine-quality-1", "wine-quality", "1")
    local_registry = files_every_node_reads(registry.tracking_uri)  # sqlite:///...
    await local_registry(record, 1)  # one node: it is this host, or can be
    with pytest.raises(ValueError) as refused:
        await local_registry(record, 3)
    assert "MLFLOW_TRACKING_URI (sqlite:///" in str(refused.value)
    assert "set MLFLOW_TRACKING_URI to an `mlflow server`" in str(refused.value)

    # A registry served over HTTP whose model files are a path of one host (a server
    # without --serve-artifacts): MLflow's own answer for such a version is a path.
    path = _download_uri(registry.tracking_uri, "wine-quality", "1")
    assert path.startswith(("/", "file:"))
    monkeypatch.setattr(gateway_placement, "_download_uri", lambda *_: path)
    with pytest.raises(ValueError, match="--serve-artifacts and register the model through it"):
        await files_every_node_reads("http://10.0.0.5:5000")(record, 3)
    monkeypatch.setattr(gateway_placement, "_download_uri", lambda *_: "mlflow-artifacts:/1/m")
    await files_every_node_reads("http://10.0.0.5:5000")(record, 3)


@pytest.mark.parametrize(
    ("env", "why"),
    [
        ({"GATEWAY_PLACEMENT": "ray"}, "GATEWAY_PLACEMENT=ray needs RAY_ADDRESS"),
        ({"GATEWAY_PLACEMENT": "ray", "RAY_ADDRESS": "ray://head:10001"}, "Ray Client address"),
        ({"GATEWAY_PLACEMENT": "kubernetes"}, "GATEWAY_PLACEMENT: expected one of local, ray"),
    ],
)
def test_ray_settings_are_checked_at_start(env: dict[str, str], why: str) -> None:
    with pytest.raises(ValidationError) as raised:
        Settings(**env)  # type: ignore[arg-type]
    assert any(why in line for line in describe_errors(raised.value)), raised.value


def test_ray_settings() -> None:
    settings = Settings(GATEWAY_PLACEMENT="ray", RAY_ADDRESS="10.0.0.5:6379")  # type: ignore[call-arg]
    assert (settings.placement, settings.ray_address, settings.ray_namespace) == (
        "ray", "10.0.0.5:6379", "modelgw",
    )  # fmt: skip
    assert Settings().placement == "local"
