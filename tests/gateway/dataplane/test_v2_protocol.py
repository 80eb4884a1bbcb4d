"""The V2 <-> MLflow translation, without a server.

Request bodies are made, and binary answers read, by `tritonclient`'s own
encoder and decoder (`generate_request_body`, `parse_response_body`), so the
framing is checked against a client we did not write.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton

from gateway.dataplane.batching import mergeable
from gateway.dataplane.v2_answers import v2_answer
from gateway.dataplane.v2_protocol import (
    BadTensor,
    InferRequest,
    UnexpectedAnswer,
    model_metadata,
    parse_request,
    spec_from_signature,
    translate_request,
)

COLUMNS = spec_from_signature(
    {
        "inputs": [
            {"type": "double", "name": "a", "required": True},
            {"type": "long", "name": "b", "required": True},
            {"type": "string", "name": "c", "required": False},
        ],
        "outputs": [{"type": "tensor", "tensor-spec": {"dtype": "int64", "shape": [-1]}}],
    }
)
TENSOR = spec_from_signature(
    {
        "inputs": [{"type": "tensor", "tensor-spec": {"dtype": "float64", "shape": [-1, 3]}}],
        "outputs": [{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1]}}],
    }
)
NAMED = spec_from_signature(
    {
        "inputs": [
            {"name": "x", "type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 2]}},
            {"name": "ids", "type": "tensor", "tensor-spec": {"dtype": "int32", "shape": [-1]}},
        ],
        "outputs": None,
    }
)


def _request(inputs: list[triton.InferInput], **kwargs: Any) -> tuple[bytes, str | None]:
    body, json_size = triton.InferenceServerClient.generate_request_body(inputs, **kwargs)
    return body, None if json_size is None else str(json_size)


def _input(name: str, array: np.ndarray, datatype: str, binary: bool) -> triton.InferInput:
    tensor = triton.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def test_metadata_follows_mlflows_type_mapping() -> None:
    kinds = ["boolean", "integer", "long", "float", "double", "string", "binary", "datetime"]
    spec = spec_from_signature({"inputs": [{"type": k, "name": k} for k in kinds]})
    assert [m.datatype for m in spec.inputs] == [
        "BOOL", "INT32", "INT64", "FP32", "FP64", "BYTES", "BYTES", "BYTES",
    ]  # fmt: skip
    assert {m.shape for m in spec.inputs} == {(-1,)}
    tensors = spec_from_signature(
        {"inputs": [{"type": "tensor", "tensor-spec": {"dtype": d, "shape": [-1, 2]}}
                    for d in ("float32", "int8", "uint16", "bool", "str", "object")]}
    )  # fmt: skip
    assert [m.datatype for m in tensors.inputs] == [
        "FP32",
        "INT8",
        "UINT16",
        "BOOL",
        "BYTES",
        "BYTES",
    ]
    assert model_metadata(TENSOR, "m", "3") == {
        "name": "m",
        "versions": ["3"],
        "platform": "mlflow",
        "inputs": [{"name": "input-0", "datatype": "FP64", "shape": [-1, 3]}],
        "outputs": [{"name": "output-0", "datatype": "FP32", "shape": [-1]}],
    }
    assert (
        model_metadata(spec_from_signature({"inputs": None, "outputs": None}), "m", "1")["inputs"]
        == []
    )


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_columns_become_dataframe_split_in_the_signatures_order(binary: bool) -> None:
    inputs = [  # the caller's order is not the signature's, and the optional column is left out
        _input("b", np.array([3, 4], dtype=np.int64), "INT64", binary),
        _input("a", np.array([0.5, 1.5]), "FP64", binary),
    ]
    _, body = translate_request(*_request(inputs), COLUMNS)
    assert json.loads(body) == {
        "dataframe_split": {"columns": ["a", "b"], "data": [[0.5, 3], [1.5, 4]]}
    }
    # ...so it merges in a batch with an /invocations call of the same columns.
    invocation = json.dumps({"dataframe_split": {"columns": ["a", "b"], "data": [[9.0, 9]]}})
    assert (
        mergeable(body, "application/json")[0]
        == mergeable(invocation.encode(), "application/json")[0]
    )  # type: ignore[index]


def test_text_columns_and_column_shapes() -> None:
    text = np.array([b"red", b"white"], dtype=np.object_)
    inputs = [
        _input("a", np.array([[1.0], [2.0]]), "FP64", True),  # [N, 1] is a column too
        _input("b", np.array([1, 2], dtype=np.int64), "INT64", True),
        _input("c", text, "BYTES", True),
    ]
    _, body = translate_request(*_request(inputs), COLUMNS)
    assert json.loads(body)["dataframe_split"]["data"] == [[1.0, 1, "red"], [2.0, 2, "white"]]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tensors_are_nested_by_their_shape(binary: bool) -> None:
    x = np.arange(6, dtype=np.float64).reshape(2, 3)
    _, body = translate_request(*_request([_input("input-0", x, "FP64", binary)]), TENSOR)
    assert json.loads(body) == {"inputs": x.tolist()}
    named = [
        _input("ids", np.array([7, 8], dtype=np.int32), "INT32", binary),
        _input("x", np.ones((2, 2), dtype=np.float32), "FP32", binary),
    ]
    _, body = translate_request(*_request(named), NAMED)
    assert json.loads(body) == {"inputs": {"x": [[1.0, 1.0], [1.0, 1.0]], "ids": [7, 8]}}


def test_every_binary_datatype_decodes() -> None:
    arrays = {
        "BOOL": np.array([True, False]), "INT8": np.array([-3, 4], dtype=np.int8),
        "UINT32": np.array([1, 2**32 - 1], dtype=np.uint32), "INT64": np.array([-(2**62), 5]),
        "FP16": np.array([0.5, -2.0], dtype=np.float16), "FP32": np.array([0.25, 3.0], dtype=np.float32),
        "FP64": np.array([0.1, 1e300]), "BYTES": np.array([b"", b"\x00ab"], dtype=np.object_),
    }  # fmt: skip
    inputs = [_input(name, a, name, True) for name, a in arrays.items()]
    parsed = parse_request(*_request(inputs))
    for tensor, (name, array) in zip(parsed.inputs, arrays.items(), strict=True):
        assert tensor.name == name and tensor.shape == [2]
        assert tensor.data == array.tolist(), name


def test_parameters_become_mlflow_params_less_the_reserved_ones() -> None:
    inputs = [_input("input-0", np.ones((1, 3)), "FP64", False)]
    body, length = _request(
        inputs, request_id="r1", priority=2, parameters={"scale": 2.0, "label": "x"}
    )
    parsed, mlflow = translate_request(body, length, TENSOR)
    assert parsed.id == "r1" and parsed.binary_output  # no outputs named: all binary
    assert json.loads(mlflow)["params"] == {"scale": 2.0, "label": "x"}
    doc = {"inputs": json.loads(body)["inputs"], "parameters": {"triton_enable": 1, "timeout": 5}}
    assert "params" not in json.loads(translate_request(json.dumps(doc).encode(), None, TENSOR)[1])


def _wine(**change: Any) -> dict[str, Any]:
    tensor = {"name": "a", "datatype": "FP64", "shape": [1], "data": [1.0]}
    return {**tensor, **change}


B = {"name": "b", "datatype": "INT64", "shape": [1], "data": [1]}
BAD = {
    "shape product differs from the data": ({"inputs": [_wine(shape=[2, 2]), B]}, "4 values, but its data holds 1"),
    "unknown input": ({"inputs": [_wine(), B, _wine(name="z")]}, "unknown input 'z'; the model takes 'a', 'b', 'c'"),
    "FP16 in JSON": ({"inputs": [_wine(datatype="FP16"), B]}, "'FP16' is not supported in JSON"),
    "unknown datatype": ({"inputs": [_wine(datatype="FP8"), B]}, "'FP8' is not supported"),
    "missing input": ({"inputs": [B]}, "missing input 'a'"),
    "given twice": ({"inputs": [_wine(), _wine(), B]}, "'a' is given twice"),
    "text for a number": ({"inputs": [_wine(data=["1.0"]), B]}, "is FP64 but holds '1.0'"),
    "float for an integer": ({"inputs": [_wine(), {**B, "data": [1.5]}]}, "is INT64 but holds 1.5"),
    "bool for a number": ({"inputs": [_wine(data=[True]), B]}, "is FP64 but holds True"),
    "negative dimension": ({"inputs": [_wine(shape=[-1]), B]}, "a list of non-negative integers"),
    "no data": ({"inputs": [_wine(data=None), B]}, "needs 'data'"),
    "no inputs": ({"inputs": []}, "'inputs' must be a non-empty list"),
    "not an object": ([1, 2], "must be a JSON object"),
    "a 2-D column": ({"inputs": [_wine(shape=[1, 2], data=[1.0, 2.0]), B]}, "a column takes [-1]"),
    "rows disagree": ({"inputs": [_wine(shape=[2], data=[1.0, 2.0]), B]}, "has 1 rows, the other inputs 2"),
    "bad parameters": ({"inputs": [_wine(), B], "parameters": [1]}, "'parameters' must be a JSON object"),
    "id not a string": ({"inputs": [_wine(), B], "id": 7}, "'id' must be a string"),
    "output without a name": ({"inputs": [_wine(), B], "outputs": [{}]}, "needs a 'name'"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD))
def test_bad_tensors_are_400s_that_say_what_is_wrong(case: str) -> None:
    doc, expected = BAD[case]
    with pytest.raises(BadTensor) as caught:
        translate_request(json.dumps(doc).encode(), None, COLUMNS)
    assert caught.value.status == 400 and expected in caught.value.detail


def test_a_tensor_shape_must_fit_the_signature() -> None:
    doc = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, 2], "data": [1.0, 2.0]}]}
    with pytest.raises(BadTensor, match=r"has shape \[1, 2\]; the model takes \[-1, 3\]"):
        translate_request(json.dumps(doc).encode(), None, TENSOR)


@pytest.mark.parametrize(
    ("body", "length", "expected"),
    [
        (b'{"inputs": []}', "x", "must be an integer"),
        (b'{"inputs": []}', "999", "the body has 14 bytes"),
        (b"{nope}", None, "not valid JSON"),
        (b'{"inputs": [{"name": "a", "datatype": "FP64", "shape": [1], "parameters": {"binary_data_size": 8}}]}1234', "99", "binary_data_size 8 does not fit the 4 bytes left"),
        (b'{"inputs": [{"name": "a", "datatype": "FP64", "shape": [1], "parameters": {"binary_data_size": 4}}]}1234', "99", "not a whole number of FP64 values"),
        (b'{"inputs": [{"name": "a", "datatype": "FP64", "shape": [0], "parameters": {"binary_data_size": 0}}]}1234', "99", "add up to 0"),
        (b'{"inputs": [{"name": "a", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 6}}]}\x09\x00\x00\x00ab', "99", "runs past its binary data"),
    ],
)  # fmt: skip
def test_binary_framing_mistakes(body: bytes, length: str | None, expected: str) -> None:
    if length == "99":
        length = str(body.index(b"}]}") + 3)
    with pytest.raises(BadTensor) as caught:
        parse_request(body, length)
    assert expected in caught.value.detail


def test_deep_nesting_is_flattened_without_recursion() -> None:
    data: Any = [1.0]
    for _ in range(900):  # near what json.loads itself accepts
        data = [data]
    doc = {"inputs": [{"name": "a", "datatype": "FP64", "shape": [1], "data": data}]}
    assert parse_request(json.dumps(doc).encode(), None).inputs[0].data == [1.0]


# ------------------------------------------------------------------ answers


def _answer(predictions: Any, request: InferRequest | None = None, spec: Any = COLUMNS) -> Any:
    request = request or InferRequest([], None, {}, None, binary_output=False)
    body, length = v2_answer(
        json.dumps({"predictions": predictions}).encode(), request, spec, "m", "2"
    )
    return triton.InferenceServerClient.parse_response_body(body, header_length=length)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_answers_read_back_with_tritonclient(binary: bool) -> None:
    request = InferRequest([], "id-9", {}, None, binary_output=binary)
    result = _answer([2, 0, 1], request)
    assert result.get_response()["id"] == "id-9"
    assert (
        result.get_response()["model_name"] == "m" and result.get_response()["model_version"] == "2"
    )
    out = result.as_numpy("output-0")
    assert out.dtype == np.int64 and out.tolist() == [2, 0, 1]
    # The signature's FP32 is kept when the values fit it.
    floats = _answer([0.5, 1.0], request, TENSOR).as_numpy("output-0")
    assert floats.dtype == np.float32 and floats.tolist() == [0.5, 1.0]
    matrix = _answer([[1.5, 2.5], [3.5, 4.5]], request).as_numpy("output-0")
    assert matrix.shape == (2, 2) and matrix.tolist() == [[1.5, 2.5], [3.5, 4.5]]
    words = _answer(["red", "white"], request).as_numpy("output-0")
    assert [w.decode() if isinstance(w, bytes) else w for w in words] == ["red", "white"]


def test_records_and_dicts_become_named_outputs() -> None:
    records = _answer([{"label": "a", "p": 0.9}, {"label": "b", "p": 0.2}])
    assert records.as_numpy("p").tolist() == [0.9, 0.2]
    assert records.get_output("label")["datatype"] == "BYTES"
    named = _answer({"scores": [[1, 2], [3, 4]], "flags": [True, False]})
    assert named.as_numpy("scores").shape == (2, 2) and named.as_numpy("flags").tolist() == [
        True,
        False,
    ]
    ragged = _answer([[1, 2], [3]])
    assert (
        ragged.get_output("output-0")["shape"] == [2]
        and ragged.get_output("output-0")["datatype"] == "BYTES"
    )
    scalar = _answer(0.25)
    assert scalar.as_numpy("output-0").tolist() == [0.25]


def test_requested_outputs_are_chosen_and_typed_per_output() -> None:
    request = InferRequest([], None, {}, [("p", True)], binary_output=False)
    result = _answer([{"label": "a", "p": 0.9}], request)
    assert [o["name"] for o in result.get_response()["outputs"]] == ["p"]
    assert result.get_output("p")["parameters"]["binary_data_size"] == 8
    with pytest.raises(BadTensor, match="unknown output 'q'; the model gives 'label', 'p'"):
        _answer([{"label": "a", "p": 0.9}], InferRequest([], None, {}, [("q", False)], False))


@pytest.mark.parametrize("answer", [b"<html>", b'{"result": 1}', b"[1, 2]"])
def test_an_answer_that_is_not_mlflows_is_a_502(answer: bytes) -> None:
    with pytest.raises(UnexpectedAnswer) as caught:
        v2_answer(answer, InferRequest([], None, {}, None, False), COLUMNS, "m", "1")
    assert caught.value.status == 502
