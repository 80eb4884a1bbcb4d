"""The desired state survives the gateway: graceful stop, kill -9, and the boot that follows."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.conftest import RegistryInfo
from tests.support import ONE_ROW, Gateway, pid_alive, wait_until

KEY = "wine-quality-1"


@pytest.fixture
def own_gateway(registry: RegistryInfo, tmp_path: Path) -> Gateway:
    return Gateway(tmp_path / "data", registry.tracking_uri)


def test_deployments_come_back_after_stop_and_after_kill(own_gateway: Gateway) -> None:
    gw = own_gateway.start()
    try:
        assert gw.post("/deploy/wine-quality/1").status == 201
        first = gw.deployment(KEY)
        assert first is not None

        # Graceful stop: the child is stopped with the gateway.
        assert gw.stop(signal.SIGTERM) == 0
        assert not pid_alive(first["pid"])

        gw.start()
        second = gw.wait_running(KEY)
        assert second["port"] == first["port"]
        assert gw.post(f"/{KEY}", json_body=ONE_ROW).status == 200

        # kill -9 of the gateway: the kernel's parent-death signal takes the children.
        gw.stop(signal.SIGKILL)
        wait_until(lambda: not pid_alive(second["pid"]), 15, what="the orphaned backend to die")

        gw.start()
        third = gw.wait_running(KEY)
        assert third["port"] == first["port"]
        assert gw.post(f"/{KEY}", json_body=ONE_ROW).status == 200
    finally:
        gw.stop()


def test_deploy_of_a_restored_key_still_starting_waits_until_it_answers(
    own_gateway: Gateway,
) -> None:
    # What `make run` does the second time: the restored deployment is still starting
    # when the deploy call comes; the call must answer only once the model serves.
    gw = own_gateway.start()
    try:
        assert gw.post("/deploy/wine-quality/1").status == 201
        gw.stop(signal.SIGTERM)
        gw.start()
        assert gw.deployment(KEY)["status"] != "running"  # the restore is under way
        again = gw.post("/deploy/wine-quality/1")
        assert again.status == 200, again.body
        assert again.json()["status"] == "running"
        assert gw.post(f"/{KEY}", json_body=ONE_ROW).status == 200
    finally:
        gw.stop()
