"""Deployments that follow a registry alias: polled, webhook-driven, and failure-safe."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from mlflow.webhooks.delivery import _generate_hmac_signature

from tests.conftest import RegistryInfo
from tests.support import ONE_ROW, Gateway, Reply, wait_until

SECRET = "webhook-secret-for-tests"


@pytest.fixture
def client(registry: RegistryInfo) -> MlflowClient:
    return MlflowClient(tracking_uri=registry.tracking_uri, registry_uri=registry.tracking_uri)


def _gateway(registry: RegistryInfo, tmp_path: Path, poll: str) -> Gateway:
    return Gateway(
        tmp_path / "data",
        registry.tracking_uri,
        extra_env={"GATEWAY_ALIAS_POLL_S": poll, "GATEWAY_WEBHOOK_SECRET": SECRET},
    )


@pytest.fixture
def polling_gateway(registry: RegistryInfo, tmp_path: Path) -> Iterator[Gateway]:
    gw = _gateway(registry, tmp_path, poll="1").start()
    yield gw
    gw.stop()


@pytest.fixture
def webhook_gateway(registry: RegistryInfo, tmp_path: Path) -> Iterator[Gateway]:
    gw = _gateway(registry, tmp_path, poll="0").start()  # only webhooks move aliases
    yield gw
    gw.stop()


def signed_call(
    gw: Gateway, event: dict[str, object], *, secret: str = SECRET, age: int = 0,
    delivery_id: str | None = None,
) -> Reply:  # fmt: skip
    body = json.dumps(event)
    delivery = delivery_id or str(uuid.uuid4())
    stamp = str(int(time.time()) - age)
    headers = {
        "Content-Type": "application/json",
        "X-MLflow-Delivery-Id": delivery,
        "X-MLflow-Timestamp": stamp,
        # MLflow's own signer: the gateway must accept exactly what MLflow sends.
        "X-MLflow-Signature": _generate_hmac_signature(secret, delivery, stamp, body),
    }
    return gw.post("/hooks/mlflow", body=body.encode(), headers=headers)


def alias_event(name: str, alias: str, version: str | None, action: str) -> dict[str, object]:
    data: dict[str, object] = {"name": name, "alias": alias}
    if version is not None:
        data["version"] = version
    return {"entity": "model_version_alias", "action": action, "timestamp": "now", "data": data}


def served_version(gw: Gateway, key: str) -> str:
    reply = gw.post(f"/{key}", json_body=ONE_ROW)
    assert reply.status == 200, reply.body
    return reply.headers["x-model-version"]


def test_an_alias_move_is_followed_without_a_failed_request(
    polling_gateway: Gateway, client: MlflowClient
) -> None:
    gw = polling_gateway
    client.set_registered_model_alias("wine-quality", "champion", "1")
    reply = gw.post("/deploy/wine-quality@champion")
    assert reply.status == 201, reply.body
    key = "wine-quality@champion"
    assert reply.json()["key"] == key and reply.json()["version"] == "1"
    assert gw.deployment(key)["alias"]["name"] == "champion"
    assert served_version(gw, key) == "1"

    statuses: list[int] = []
    versions: set[str] = set()
    stop = threading.Event()

    def load() -> None:
        deadline = time.monotonic() + 120
        while not stop.is_set() and time.monotonic() < deadline:
            r = gw.post(f"/{key}", json_body=ONE_ROW)
            statuses.append(r.status)
            if r.status == 200:
                versions.add(r.headers["x-model-version"])

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        client.set_registered_model_alias("wine-quality", "champion", "2")
        wait_until(lambda: "2" in versions, 60, what="answers from version 2")
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert statuses and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    assert versions == {"1", "2"}
    assert served_version(gw, key) == "2"
    entry = gw.deployment(key)
    assert entry["version"] == "2" and entry["alias"]["error"] is None

    # The data endpoints take the alias key; records keep the version that served them.
    dataset = gw.get(f"/model/{key}/dataset")
    assert dataset.status == 200


def test_a_signed_webhook_moves_the_alias_at_once_and_bad_calls_are_refused(
    webhook_gateway: Gateway, client: MlflowClient
) -> None:
    gw = webhook_gateway
    client.set_registered_model_alias("wine-quality", "staging", "2")
    assert gw.post("/deploy/wine-quality@staging").status == 201
    key = "wine-quality@staging"

    client.set_registered_model_alias("wine-quality", "staging", "1")
    event = alias_event("wine-quality", "staging", "1", "created")
    unsigned = gw.post("/hooks/mlflow", json_body=event)
    assert unsigned.status == 401 and unsigned.json()["error"] == "unauthorized"
    assert signed_call(gw, event, secret="wrong").status == 401
    assert signed_call(gw, event, age=3600).status == 401  # a replayed old call
    assert gw.deployment(key)["version"] == "2"  # nothing moved on refused calls

    delivery = str(uuid.uuid4())
    accepted = signed_call(gw, event, delivery_id=delivery)
    assert accepted.status == 200, accepted.body
    assert accepted.json()["following"] == [key]
    assert signed_call(gw, event, delivery_id=delivery).status == 401  # same delivery again
    wait_until(lambda: gw.deployment(key)["version"] == "1", 60, what="the move to version 1")
    assert served_version(gw, key) == "1"

    # The alias is deleted: the last version keeps serving, and the reason shows.
    client.delete_registered_model_alias("wine-quality", "staging")
    assert signed_call(gw, alias_event("wine-quality", "staging", None, "deleted")).status == 200
    wait_until(lambda: gw.deployment(key)["alias"]["error"], 30, what="the alias error")
    assert "no longer exists" in gw.deployment(key)["alias"]["error"]
    assert served_version(gw, key) == "1"


def test_alias_mistakes_get_clear_json_errors(gateway: Gateway) -> None:
    unknown = gateway.post("/deploy/wine-quality@no-such-alias")
    assert unknown.status == 404 and unknown.json()["error"] == "alias_not_found"
    missing_model = gateway.post("/deploy/no-such-model@champion")
    assert missing_model.status == 404 and missing_model.json()["error"] == "model_not_found"
    for bad in ("wine-quality@latest", "wine-quality@v3", "wine-quality@bad%20alias"):
        reply = gateway.post(f"/deploy/{bad}")
        assert reply.status == 400 and reply.json()["error"] == "invalid_name", bad
    assert gateway.post("/deploy/wine-quality").status == 400  # neither version nor alias
    assert gateway.get("/model/wine-quality@champion/dataset").status == 404
