"""Deploy calls on the real model: fresh replicas, options on a deployed key, one download."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.deploy.launchers import ArtifactCache
from tests.conftest import RegistryInfo
from tests.support import ONE_ROW, Gateway


def test_a_fresh_deploy_with_two_replicas_answers_with_both_running(gateway: Gateway) -> None:
    # wine-quality/2 was never downloaded by this gateway: both replicas start at
    # once and share one download (they used to remove each other's staging files).
    reply = gateway.post("/deploy/wine-quality/2?replicas=2", timeout=150)
    try:
        assert reply.status == 201, reply.body
        body = reply.json()
        assert body["status"] == "running"
        assert [r["status"] for r in body["replicas"]] == ["running", "running"]
        assert len({r["port"] for r in body["replicas"]}) == 2
        assert gateway.post("/wine-quality-2", json_body=ONE_ROW).status == 200
    finally:
        assert gateway.post("/undeploy/wine-quality-2").status == 200


def test_options_on_a_deployed_key_are_applied_or_refused(gateway: Gateway) -> None:
    key = "wine-quality-1"
    gateway.wait_running(key)
    scaled = gateway.post("/deploy/wine-quality/1?replicas=2")
    assert scaled.status == 200, scaled.body
    assert len(scaled.json()["replicas"]) == 2
    assert "scaled from 1 to 2" in scaled.json()["message"]
    assert len(gateway.deployment(key)["replicas"]) == 2
    back = gateway.post("/deploy/wine-quality/1?replicas=1")
    assert back.status == 200 and len(back.json()["replicas"]) == 1

    refused = gateway.post("/deploy/wine-quality/1?env_manager=virtualenv")
    assert refused.status == 409, refused.body
    assert refused.json()["error"] == "conflict"
    assert "replace=true" in refused.json()["detail"]
    assert gateway.deployment(key)["env_manager"] == "local"

    same = gateway.post("/deploy/wine-quality/1")
    assert same.status == 200 and "nothing was started" in same.json()["message"]


def test_the_artifact_cache_downloads_a_version_once_for_concurrent_starters(
    registry: RegistryInfo, tmp_path: Path
) -> None:
    import mlflow

    mlflow.set_tracking_uri(registry.tracking_uri)
    mlflow.set_registry_uri(registry.tracking_uri)
    cache = ArtifactCache(tmp_path / "models")

    async def fetch_three() -> list[Path]:
        return await asyncio.gather(*(cache.fetch("wine-quality", "1") for _ in range(3)))

    paths = asyncio.run(fetch_three())
    assert cache.downloads == 1
    assert len(set(paths)) == 1 and (paths[0] / "MLmodel").is_file()
    assert sorted(p.name for p in (tmp_path / "models" / "wine-quality").iterdir()) == ["1"]
    # Already on disk: a later start does not download again.
    asyncio.run(fetch_three())
    assert cache.downloads == 1
