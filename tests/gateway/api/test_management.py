"""The management API and inference against a real deployment of a real MLflow model."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_wine

from tests.support import ONE_ROW, Gateway

KEY = "wine-quality-1"


@pytest.fixture(scope="module")
def wine_rows() -> pd.DataFrame:
    data = load_wine(as_frame=True).data.rename(columns=lambda c: c.replace("/", "_"))
    return data.sample(12, random_state=1).reset_index(drop=True)


def _bodies(rows: pd.DataFrame) -> dict[str, dict[str, Any]]:
    return {
        "dataframe_split": {"dataframe_split": json.loads(rows.to_json(orient="split"))},
        "dataframe_records": {"dataframe_records": rows.to_dict(orient="records")},
        "instances": {"instances": rows.to_dict(orient="records")},
        "inputs": {"inputs": rows.to_dict(orient="list")},
    }


@pytest.mark.parametrize("fmt", ["dataframe_split", "dataframe_records", "instances", "inputs"])
@pytest.mark.parametrize("path", ["/{key}", "/{key}/invocations", "/model/{key}"])
def test_predictions_equal_local_predict(
    gateway: Gateway, local_model: Any, wine_rows: pd.DataFrame, fmt: str, path: str
) -> None:
    reply = gateway.post(path.format(key=KEY), json_body=_bodies(wine_rows)[fmt])
    assert reply.status == 200, reply.body
    assert reply.headers["content-type"].startswith("application/json")
    predictions = reply.json()["predictions"]
    expected = local_model.predict(wine_rows)
    np.testing.assert_array_equal(np.asarray(predictions), np.asarray(expected))


def test_csv_body_passes_through(gateway: Gateway, local_model: Any, wine_rows: pd.DataFrame):
    reply = gateway.post(
        f"/{KEY}", body=wine_rows.to_csv(index=False).encode(), headers={"Content-Type": "text/csv"}
    )
    assert reply.status == 200, reply.body
    assert reply.json()["predictions"] == list(local_model.predict(wine_rows))


def test_invalid_json_gets_the_backends_400(gateway: Gateway) -> None:
    reply = gateway.post(f"/{KEY}", body=b"{not json", headers={"Content-Type": "application/json"})
    assert reply.status == 400
    assert "json" in reply.body.decode().lower()
    # ...and the backend keeps serving.
    assert gateway.get(f"/{KEY}/ping").status == 200


@pytest.mark.parametrize("endpoint", ["ping", "health", "version"])
def test_backend_get_endpoints(gateway: Gateway, endpoint: str) -> None:
    assert gateway.get(f"/{KEY}/{endpoint}").status == 200


def test_health(gateway: Gateway) -> None:
    body = gateway.get("/health").json()
    assert body["status"] == "ok"
    assert body["deployments"] >= 1


def test_registry_listing(gateway: Gateway) -> None:
    assert "wine-quality" in gateway.get("/get_model_list").json()
    assert gateway.get("/get_model_version_list/wine-quality").json() == ["1", "2"]


def test_signature(gateway: Gateway) -> None:
    sig = gateway.get(f"/model/{KEY}/signature").json()
    names = [col["name"] for col in sig["inputs"]]
    assert names[0] == "alcohol" and len(names) == 13
    assert all(col["type"] == "double" for col in sig["inputs"])
    assert sig["outputs"] and "type" in sig["outputs"][0]
    # A version that is registered but not deployed has a signature too.
    assert gateway.get("/model/wine-quality-2/signature").status == 200


def test_type_mapping(gateway: Gateway) -> None:
    reply = gateway.get("/type_mapping")
    assert reply.status == 200
    assert reply.json()["float"] == "double"


def test_deployed_models_shape(gateway: Gateway) -> None:
    entry = gateway.get("/get_deployed_models").json()[KEY]
    for field in ("model_name", "version", "port", "run_uuid", "status", "pid", "started_at"):
        assert entry[field] is not None, field
    assert entry["model_name"] == "wine-quality" and entry["version"] == "1"
    assert entry["status"] == "running"
    assert isinstance(entry["restarts"], int)


def test_deploying_again_returns_the_existing_deployment(gateway: Gateway) -> None:
    before = gateway.deployment(KEY)
    reply = gateway.post("/deploy/wine-quality/1")
    assert reply.status == 200
    body = reply.json()
    assert body["key"] == KEY and body["port"] == before["port"]
    assert gateway.deployment(KEY)["pid"] == before["pid"]


def test_free_ports_counts_the_range_minus_deployments(gateway: Gateway) -> None:
    start, end = gateway.port_range
    used = sum(len(d["replicas"]) for d in gateway.get("/get_deployed_models").json().values())
    assert gateway.get("/get_number_free_ports").json() == (end - start + 1) - used


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("POST", "/deploy/no-such-model/1", 404, "model_not_found"),
        ("POST", "/deploy/wine-quality/99", 404, "version_not_found"),
        ("POST", "/deploy/wine-quality/abc", 400, "invalid_name"),
        ("POST", "/deploy/wine-quality/0", 400, "invalid_name"),
        ("POST", "/deploy/bad%27name/1", 400, "invalid_name"),
        ("POST", "/deploy/..%2F..%2Fetc/1", 400, "invalid_name"),
        ("POST", "/deploy/wine-quality/1?env_manager=bash", 400, "bad_request"),
        ("POST", "/deploy/wine-quality/1?replicas=0", 400, "bad_request"),
        ("POST", "/deploy/wine-quality/1?replicas=x", 400, "bad_request"),
        ("POST", "/deploy/wine-quality/2?env_manager=local&env_manager=uv", 400, "bad_request"),
        ("GET", "/get_model_version_list/no-such-model", 404, "model_not_found"),
        ("GET", "/model/wine-quality-99/signature", 404, "version_not_found"),
        ("GET", "/model/nohyphen/signature", 400, "bad_request"),
        ("POST", "/undeploy/wine-quality-99", 404, "deployment_not_found"),
        ("POST", "/no-such-model-1", 404, "deployment_not_found"),
        ("POST", "/wine-quality-2", 404, "deployment_not_found"),
        ("GET", "/wine-quality-2/ping", 404, "deployment_not_found"),
        ("GET", "/a/b/c/d", 404, "not_found"),
        ("GET", f"/{KEY}", 405, "method_not_allowed"),
        ("DELETE", "/health", 405, "method_not_allowed"),
    ],
)
def test_bad_requests_get_json_errors(
    gateway: Gateway, method: str, path: str, status: int, code: str
) -> None:
    reply = gateway.request(method, path)
    assert reply.status == status, reply.body
    body = reply.json()
    assert body["error"] == code
    assert isinstance(body["detail"], str) and body["detail"]
    # The gateway keeps serving after every mistake.
    assert gateway.post(f"/{KEY}", json_body=ONE_ROW).status == 200
