"""The Open Inference Protocol against real deployments, spoken by a client we did not write.

`tritonclient[http]` calls the shared gateway's column-signature model
(`wine-quality-1`) and a tensor-signature pyfunc model registered here, with
numpy inputs as binary tensors (its default) and as JSON; predictions must equal
the models' own local `predict`.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest
import tritonclient.http as triton
from sklearn.datasets import load_wine
from tritonclient.utils import InferenceServerException

from tests.conftest import RegistryInfo
from tests.support import WINE_COLUMNS, Gateway

WINE = "wine-quality"
TENSOR_MODEL = "v2-tensor"
WEIGHTS = [0.5, -1.25, 2.0, 3.5]


@pytest.fixture(scope="module")
def wine_rows() -> pd.DataFrame:
    data = load_wine(as_frame=True).data.rename(columns=lambda c: c.replace("/", "_"))
    return data.sample(7, random_state=3).reset_index(drop=True)


@pytest.fixture(scope="module")
def client(gateway: Gateway) -> Iterator[triton.InferenceServerClient]:
    gateway.wait_running(f"{WINE}-1")
    client = triton.InferenceServerClient(f"127.0.0.1:{gateway.port}", network_timeout=120)
    yield client
    client.close()


def _register_tensor_model(registry: RegistryInfo) -> str:
    """A pyfunc model with a tensor signature (float64 [-1, 4] -> float64 [-1]) and a param."""
    import mlflow
    from mlflow.models import infer_signature
    from mlflow.tracking import MlflowClient

    class Weighted(mlflow.pyfunc.PythonModel):  # local: pickled by value for the backend
        # An ndarray hint: MLflow infers no schema from it, and asks for no other (it warns
        # at class creation about a missing or a generic hint).
        def predict(self, context: Any, model_input: np.ndarray, params: Any = None) -> Any:
            scale = (params or {}).get("scale", 1.0)
            return np.asarray(model_input, dtype=np.float64) @ np.asarray(WEIGHTS) * scale

    # MLflow advises on input examples with a UserWarning (an error here).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)

        example = np.arange(8, dtype=np.float64).reshape(2, 4)
        signature = infer_signature(
            example, Weighted().predict(None, example), params={"scale": 1.0}
        )
        mlflow.set_tracking_uri(registry.tracking_uri)
        client = MlflowClient(registry.tracking_uri)
        if client.get_experiment_by_name("v2-tests") is None:
            location = str(registry.root / "v2-artifacts")
            client.create_experiment("v2-tests", artifact_location=location)
        mlflow.set_experiment("v2-tests")
        with mlflow.start_run():
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=Weighted(),
                signature=signature,
                pip_requirements=["mlflow", "numpy"],
                registered_model_name=TENSOR_MODEL,
            )
    return str(info.registered_model_version)


@pytest.fixture(scope="module")
def tensor_model(gateway: Gateway, registry: RegistryInfo) -> Iterator[Any]:
    """The tensor model deployed on the shared gateway; undeployed afterwards."""
    import mlflow

    version = _register_tensor_model(registry)
    reply = gateway.post(f"/deploy/{TENSOR_MODEL}/{version}")
    assert reply.status in (200, 201), (reply.body, gateway.log())
    try:
        gateway.wait_running(f"{TENSOR_MODEL}-{version}")
        yield version, mlflow.pyfunc.load_model(f"models:/{TENSOR_MODEL}/{version}")
    finally:
        gateway.post(f"/undeploy/{TENSOR_MODEL}-{version}")


def _wine_inputs(rows: pd.DataFrame, binary: bool) -> list[triton.InferInput]:
    inputs = []
    for column in reversed(WINE_COLUMNS):  # any order: the gateway sends the signature's
        tensor = triton.InferInput(column, [len(rows)], "FP64")
        tensor.set_data_from_numpy(rows[column].to_numpy(np.float64), binary_data=binary)
        inputs.append(tensor)
    return inputs


def test_health_and_server_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata["name"] == "modelgw"
    assert "binary_tensor_data" in metadata["extensions"]


def test_column_model_metadata_from_its_signature(client: triton.InferenceServerClient) -> None:
    assert client.is_model_ready(WINE, "1")
    assert client.is_model_ready(f"{WINE}-1")  # the deployment key alone
    metadata = client.get_model_metadata(WINE, "1")
    assert metadata["name"] == WINE and metadata["versions"] == ["1"]
    assert metadata["inputs"] == [
        {"name": column, "datatype": "FP64", "shape": [-1]} for column in WINE_COLUMNS
    ]
    assert metadata["outputs"] == [{"name": "output-0", "datatype": "INT64", "shape": [-1]}]
    assert client.get_model_metadata(f"{WINE}-1") == metadata


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_column_model_predictions_equal_local_predict(
    client: triton.InferenceServerClient, local_model: Any, wine_rows: pd.DataFrame, binary: bool
) -> None:
    outputs = [triton.InferRequestedOutput("output-0", binary_data=binary)]
    result = client.infer(
        WINE, _wine_inputs(wine_rows, binary), "1", outputs=outputs, request_id="call-7"
    )
    predictions = result.as_numpy("output-0")
    assert predictions.dtype == np.int64 and predictions.shape == (len(wine_rows),)
    np.testing.assert_array_equal(predictions, local_model.predict(wine_rows))
    response = result.get_response()
    assert response["id"] == "call-7"
    assert response["model_name"] == WINE and response["model_version"] == "1"


def test_column_model_with_default_outputs(
    client: triton.InferenceServerClient, local_model: Any, wine_rows: pd.DataFrame
) -> None:
    # No outputs named: tritonclient asks for every output as binary data.
    result = client.infer(f"{WINE}-1", _wine_inputs(wine_rows.iloc[:1], binary=True))
    np.testing.assert_array_equal(
        result.as_numpy("output-0"), local_model.predict(wine_rows.iloc[:1])
    )


def test_tensor_model(client: triton.InferenceServerClient, tensor_model: Any) -> None:
    version, local = tensor_model
    assert client.is_model_ready(TENSOR_MODEL, version)
    metadata = client.get_model_metadata(TENSOR_MODEL, version)
    assert metadata["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": [-1, 4]}]
    assert metadata["outputs"] == [{"name": "output-0", "datatype": "FP64", "shape": [-1]}]
    x = np.random.default_rng(0).normal(size=(5, 4))
    for binary in (True, False):
        tensor = triton.InferInput("input-0", list(x.shape), "FP64")
        tensor.set_data_from_numpy(x, binary_data=binary)
        result = client.infer(TENSOR_MODEL, [tensor], version)
        np.testing.assert_array_equal(result.as_numpy("output-0"), local.predict(x))
    # Parameters reach the model as MLflow params.
    scaled = client.infer(TENSOR_MODEL, [tensor], version, parameters={"scale": 2.0})
    np.testing.assert_array_equal(
        scaled.as_numpy("output-0"), local.predict(x, params={"scale": 2.0})
    )


def test_errors_reach_the_client_as_protocol_errors(
    client: triton.InferenceServerClient, wine_rows: pd.DataFrame
) -> None:
    assert not client.is_model_ready("nope", "1")
    with pytest.raises(InferenceServerException) as missing:
        client.infer("nope", _wine_inputs(wine_rows, binary=True), "1")
    assert missing.value.status() == "404" and "nope-1" in missing.value.message()
    short = _wine_inputs(wine_rows, binary=False)[1:]  # one column left out
    with pytest.raises(InferenceServerException) as bad:
        client.infer(WINE, short, "1")
    assert bad.value.status() == "400" and "missing input" in bad.value.message()


def _v2(inputs: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"inputs": inputs, **extra}


def _wine_json(rows: int = 1) -> list[dict[str, Any]]:
    return [
        {"name": c, "datatype": "FP64", "shape": [rows], "data": [1.0] * rows} for c in WINE_COLUMNS
    ]


BAD_TENSORS = {
    "shape product differs from the data": (
        lambda: _v2([{**_wine_json()[0], "shape": [2]}, *_wine_json()[1:]]),
        "2 values, but its data holds 1",
    ),
    "unknown input name": (
        lambda: _v2(
            [*_wine_json(), {"name": "colour", "datatype": "FP64", "shape": [1], "data": [1.0]}]
        ),
        "unknown input 'colour'",
    ),
    "FP16 in JSON": (
        lambda: _v2([{**_wine_json()[0], "datatype": "FP16"}, *_wine_json()[1:]]),
        "'FP16' is not supported in JSON",
    ),
    "missing input": (lambda: _v2(_wine_json()[1:]), "missing input 'alcohol'"),
    "wrong value type": (
        lambda: _v2([{**_wine_json()[0], "data": ["x"]}, *_wine_json()[1:]]),
        "is FP64 but holds 'x'",
    ),
    "no inputs": (lambda: {"inputs": []}, "'inputs' must be a non-empty list"),
    "rows disagree": (
        lambda: _v2([*_wine_json(2)[:1], *_wine_json(1)[1:]]),
        "has 1 rows, the other inputs 2",
    ),
    "unknown output": (
        lambda: _v2(_wine_json(), outputs=[{"name": "proba"}]),
        "unknown output 'proba'",
    ),
}


@pytest.mark.parametrize("case", list(BAD_TENSORS))
def test_bad_tensors_are_protocol_400s(gateway: Gateway, case: str) -> None:
    make, expected = BAD_TENSORS[case]
    reply = gateway.post(f"/v2/models/{WINE}/versions/1/infer", json_body=make())
    assert reply.status == 400, reply.body
    body = reply.json()
    assert body["error"].startswith("bad_tensor: ") and expected in body["error"], body
    assert body["detail"] in body["error"]


def test_bad_binary_framing_is_a_400(gateway: Gateway) -> None:
    header = json.dumps(
        {
            "inputs": [
                {**t, "data": None, "parameters": {"binary_data_size": 8}} for t in _wine_json()
            ]
        }
    ).encode()
    header = header.replace(b'"data": null, ', b"")
    body = header + np.ones(12, dtype="<f8").tobytes()  # one value short
    reply = gateway.post(
        f"/v2/models/{WINE}-1/infer",
        body=body,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert reply.status == 400 and "binary_data_size" in reply.json()["error"], reply.body


def test_the_backends_own_error_keeps_the_protocol_shape(gateway: Gateway) -> None:
    # A tensor MLflow itself refuses (text for a double column): its 400, our shape.
    body = _v2([{**_wine_json()[0], "datatype": "BYTES", "data": ["strong"]}, *_wine_json()[1:]])
    reply = gateway.post(f"/v2/models/{WINE}/versions/1/infer", json_body=body)
    assert reply.status == 400, reply.body
    error = reply.json()
    assert error["error_code"] == "BAD_REQUEST" and "column alcohol" in error["message"]
    assert error["error"] == f"bad_request: {error['detail']}" and "'strong'" in error["detail"]
