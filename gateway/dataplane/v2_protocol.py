"""The Open Inference Protocol (KServe V2 REST) to MLflow scoring and back, as pure functions.

A V2 inference request becomes the body MLflow's `/invocations` takes, and
MLflow's `{"predictions": ...}` answer becomes V2 `outputs`. A column-based
signature turns into `dataframe_split` in the signature's column order, so a V2
call merges into a batch with `/invocations` calls of the same columns and is
logged like them; a tensor signature turns into `inputs`. Tensors may come as
JSON or with the binary tensor extension (`binary_data_size`, raw little-endian
bytes after the JSON header). Nothing here does I/O: the handlers run these on
the event loop for small bodies and in a worker thread for large ones.
"""

from __future__ import annotations

import base64
import json
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gateway.errors import BadRequest, GatewayError

# MLflow column types to V2 datatypes (the mapping MLServer's MLflow runtime uses).
COLUMN_DATATYPES = {
    "boolean": "BOOL", "integer": "INT32", "long": "INT64", "float": "FP32", "double": "FP64",
    "string": "BYTES", "binary": "BYTES", "datetime": "BYTES",
}  # fmt: skip
# Little-endian numpy dtypes of the fixed-size datatypes, for binary tensors.
NUMPY_DTYPES = {
    "BOOL": "?", "INT8": "<i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8",
    "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8",
    "FP16": "<f2", "FP32": "<f4", "FP64": "<f8",
}  # fmt: skip
_TENSOR_DATATYPES = {np.dtype(v).name: k for k, v in NUMPY_DTYPES.items()}
# What a JSON value of each datatype may be (bool is not a number here, as in numpy's JSON).
_INTS = frozenset({int})
_JSON_VALUE_TYPES: dict[str, frozenset[type]] = {
    "BOOL": frozenset({bool}), "BYTES": frozenset({str}),
    "FP32": frozenset({float, int}), "FP64": frozenset({float, int}),
    **dict.fromkeys(("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"),
                    _INTS),
}  # fmt: skip
# Request parameters that steer the protocol (Triton's reserved names); the rest are MLflow params.
RESERVED_PARAMETERS = frozenset({
    "binary_data_output", "binary_data", "binary_data_size", "content_type", "headers",
    "sequence_id", "sequence_start", "sequence_end", "priority", "timeout",
    "shared_memory_region", "shared_memory_byte_size", "shared_memory_offset", "classification",
})  # fmt: skip
INPUT_PREFIX, OUTPUT_PREFIX = "input-", "output-"
EXTENSIONS = ("binary_tensor_data", "parameters")


class BadTensor(BadRequest):
    code = "bad_tensor"


class UnexpectedAnswer(GatewayError):
    """The backend answered 200 with something that is not MLflow's `{"predictions": ...}`."""

    status, code = 502, "unexpected_backend_answer"


# ----------------------------------------------------------------- metadata


@dataclass(frozen=True, slots=True)
class TensorMeta:
    name: str
    datatype: str
    shape: tuple[int, ...]
    required: bool = True
    mlflow_type: str = ""

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """What the protocol needs of a model version's MLflow signature."""

    inputs: tuple[TensorMeta, ...]
    outputs: tuple[TensorMeta, ...]
    columns: bool  # a column-based input signature: dataframe_split
    named_tensors: bool  # tensor inputs sent by name: {"inputs": {name: ...}}
    positional_columns: bool = False  # unnamed columns: dataframe_split without names
    by_name: dict[str, TensorMeta] = field(default_factory=dict)  # the inputs, for look-ups
    required: tuple[str, ...] = ()

    @property
    def has_signature(self) -> bool:
        return bool(self.inputs)


def _tensor_datatype(dtype: str) -> str:
    if dtype in _TENSOR_DATATYPES:
        return _TENSOR_DATATYPES[dtype]
    # str, object, bytes and numpy's <U / |S strings: text or bytes either way.
    return "BYTES"


def _metas(schema: list[dict[str, Any]] | None, prefix: str) -> tuple[list[TensorMeta], bool]:
    """The tensors of one side of a signature, and whether it is column-based."""
    metas, columns = [], True
    for i, spec in enumerate(schema or []):
        name = spec.get("name") or f"{prefix}{i}"
        kind = spec.get("type")
        if kind == "tensor":
            columns = False
            tensor = spec.get("tensor-spec", {})
            shape = tuple(int(d) for d in tensor.get("shape") or ())
            metas.append(TensorMeta(name, _tensor_datatype(str(tensor.get("dtype"))), shape))
        else:
            # Array, object and map columns have no V2 datatype of their own: JSON as BYTES.
            kind_name = kind if isinstance(kind, str) else "object"
            datatype = COLUMN_DATATYPES.get(kind_name, "BYTES")
            metas.append(TensorMeta(name, datatype, (-1,), bool(spec.get("required", True)),
                                    kind_name))  # fmt: skip
    return metas, columns


def spec_from_signature(signature: dict[str, Any]) -> ModelSpec:
    """The spec of `Registry.signature`'s answer (each side is MLflow's `Schema.to_dict()`)."""
    inputs, columns = _metas(signature.get("inputs"), INPUT_PREFIX)
    outputs, _ = _metas(signature.get("outputs"), OUTPUT_PREFIX)
    raw_inputs = signature.get("inputs") or []
    named = all(s.get("name") for s in raw_inputs)
    return ModelSpec(
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        columns=columns,
        named_tensors=not columns and named and len(raw_inputs) > 0,
        positional_columns=columns and bool(raw_inputs) and not named,
        by_name={m.name: m for m in inputs},
        required=tuple(m.name for m in inputs if m.required),
    )


def model_metadata(spec: ModelSpec, name: str, version: str) -> dict[str, Any]:
    return {
        "name": name,
        "versions": [version],
        "platform": "mlflow",
        "inputs": [m.describe() for m in spec.inputs],
        "outputs": [m.describe() for m in spec.outputs],
    }


# ------------------------------------------------------------------ requests


@dataclass(slots=True)
class InputTensor:
    name: str
    datatype: str
    shape: list[int]
    data: list[Any]  # flat, row-major


@dataclass(slots=True)
class InferRequest:
    inputs: list[InputTensor]
    id: str | None
    params: dict[str, Any]  # MLflow params: the request's parameters less the reserved ones
    outputs: list[tuple[str, bool]] | None  # requested outputs and whether each is binary
    binary_output: bool  # the default for outputs not requested by name


def translate_request(
    raw: bytes, header_length: str | None, spec: ModelSpec
) -> tuple[InferRequest, bytes]:
    """The parsed V2 request and the MLflow scoring body it becomes (400 `BadTensor` if bad)."""
    request = parse_request(raw, header_length)
    return request, mlflow_body(request, spec)


def parse_request(raw: bytes, header_length: str | None) -> InferRequest:
    binary = b""
    if header_length is not None:
        try:
            size = int(header_length)
        except ValueError:
            raise BadTensor(
                f"Inference-Header-Content-Length must be an integer, not {header_length!r}"
            ) from None
        if not 0 < size <= len(raw):
            raise BadTensor(
                f"Inference-Header-Content-Length is {size} but the body has {len(raw)} bytes"
            )
        raw, binary = raw[:size], raw[size:]
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BadTensor(f"the body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadTensor("the body must be a JSON object with 'inputs'")
    parameters = _object(doc.get("parameters"), "parameters")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadTensor("'inputs' must be a non-empty list of tensors")
    offset = 0
    tensors = []
    for item in inputs:
        tensor, used = _input(item, binary, offset)
        offset += used
        tensors.append(tensor)
    if offset != len(binary):
        raise BadTensor(
            f"the binary part has {len(binary)} bytes but the inputs' binary_data_size"
            f" add up to {offset}"
        )
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadTensor("'id' must be a string")
    return InferRequest(
        inputs=tensors,
        id=request_id,
        params={
            k: v
            for k, v in parameters.items()
            if k not in RESERVED_PARAMETERS and not k.startswith("triton_")
        },
        outputs=_requested_outputs(doc.get("outputs")),
        binary_output=parameters.get("binary_data_output") is True,
    )


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadTensor(f"'{what}' must be a JSON object")
    return value


def _requested_outputs(value: Any) -> list[tuple[str, bool]] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise BadTensor("'outputs' must be a list")
    requested = []
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise BadTensor("each requested output needs a 'name'")
        binary = _object(item.get("parameters"), "parameters").get("binary_data") is True
        requested.append((item["name"], binary))
    return requested


def _input(item: Any, binary: bytes, offset: int) -> tuple[InputTensor, int]:
    """One input tensor, and how many bytes of the binary part it took."""
    if type(item) is not dict or type(item.get("name")) is not str:
        raise BadTensor("each input needs a string 'name'")
    name, datatype, shape = item["name"], item.get("datatype"), item.get("shape")
    if type(datatype) is not str:
        raise BadTensor(f"input {name!r} needs a string 'datatype'")
    if type(shape) is not list:
        shape = [None]
    count = 1
    for dim in shape:
        if type(dim) is not int or dim < 0:
            raise BadTensor(f"input {name!r} needs a 'shape': a list of non-negative integers")
        count *= dim
    parameters = item.get("parameters")
    size = None if parameters is None else _object(parameters, "parameters").get("binary_data_size")
    if size is not None:
        if "data" in item:
            raise BadTensor(f"input {name!r} has both 'data' and binary_data_size")
        if type(size) is not int or size < 0 or offset + size > len(binary):
            raise BadTensor(
                f"input {name!r}: binary_data_size {size!r} does not fit the"
                f" {len(binary) - offset} bytes left"
            )
        data = _from_binary(name, datatype, binary[offset : offset + size])
        used = size
    else:
        raw, used = item.get("data"), 0
        allowed = _JSON_VALUE_TYPES.get(datatype)
        if allowed is None or type(raw) is not list:
            raise _json_mistake(name, datatype)
        data = _flatten(raw)
        for value in data:
            if type(value) not in allowed:
                raise BadTensor(f"input {name!r} is {datatype} but holds {value!r}")
    if len(data) != count:
        raise BadTensor(
            f"input {name!r} has shape {shape}, {count} values, but its data holds {len(data)}"
        )
    return InputTensor(name, datatype, shape, data), used


def _json_mistake(name: str, datatype: str) -> BadTensor:
    if datatype not in _JSON_VALUE_TYPES:
        hint = " in JSON; send it as binary data" if datatype in NUMPY_DTYPES else ""
        return BadTensor(f"input {name!r}: datatype {datatype!r} is not supported{hint}")
    return BadTensor(f"input {name!r} needs 'data' (a list) or binary_data_size")


def _flatten(data: list[Any]) -> list[Any]:
    """Nested lists in row-major order; a flat list is returned as it is."""
    for value in data:
        if type(value) is list:
            break
    else:
        return data
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:  # iterative: a deeply nested body cannot exhaust the call stack
        for value in stack[-1]:
            if type(value) is list:
                stack.append(iter(value))
                break
            flat.append(value)
        else:
            stack.pop()
    return flat


def _from_binary(name: str, datatype: str, chunk: bytes) -> list[Any]:
    if datatype == "BYTES":
        return _unpack_bytes(name, chunk)
    dtype = NUMPY_DTYPES.get(datatype)
    if dtype is None:
        raise BadTensor(f"input {name!r}: datatype {datatype!r} is not supported")
    itemsize = np.dtype(dtype).itemsize
    if len(chunk) % itemsize:
        raise BadTensor(
            f"input {name!r}: {len(chunk)} bytes is not a whole number of {datatype} values"
        )
    values: list[Any] = np.frombuffer(chunk, dtype=dtype).tolist()
    return values


def _unpack_bytes(name: str, chunk: bytes) -> list[Any]:
    """BYTES elements: each a 4-byte little-endian length, then that many bytes."""
    values: list[Any] = []
    offset, end = 0, len(chunk)
    while offset < end:
        if offset + 4 > end:
            raise BadTensor(f"input {name!r}: a BYTES element's length is cut short")
        (length,) = struct.unpack_from("<I", chunk, offset)
        offset += 4
        if offset + length > end:
            raise BadTensor(f"input {name!r}: a BYTES element runs past its binary data")
        values.append(chunk[offset : offset + length])
        offset += length
    return values


def mlflow_body(request: InferRequest, spec: ModelSpec) -> bytes:
    """The `/invocations` body of a V2 request, checked against the signature."""
    by_name: dict[str, InputTensor] = {}
    for tensor in request.inputs:
        if tensor.name in by_name:
            raise BadTensor(f"input {tensor.name!r} is given twice")
        by_name[tensor.name] = tensor
    inputs = request.inputs
    body: dict[str, Any]
    if spec.has_signature:
        _check_names(by_name, spec)
        # The signature's order: equal-column calls from any client merge in a batch.
        inputs = [by_name[m.name] for m in spec.inputs if m.name in by_name]
    if spec.columns and (spec.has_signature or all(len(t.shape) == 1 for t in inputs)):
        body = {"dataframe_split": _dataframe_split(inputs, spec)}
    elif spec.named_tensors or (not spec.has_signature and len(inputs) > 1):
        metas = spec.by_name
        body = {"inputs": {t.name: _tensor_value(t, metas.get(t.name)) for t in inputs}}
    elif len(inputs) == 1:
        body = {"inputs": _tensor_value(inputs[0], spec.inputs[0] if spec.inputs else None)}
    else:
        raise BadTensor(f"the model takes one input tensor, not {len(inputs)}")
    if request.params:
        body["params"] = request.params
    return json.dumps(body).encode()


def _check_names(by_name: dict[str, InputTensor], spec: ModelSpec) -> None:
    for name in by_name:
        if name not in spec.by_name:
            raise BadTensor(f"unknown input {name!r}; the model takes {_takes(spec)}")
    for name in spec.required:
        if name not in by_name:
            raise BadTensor(f"missing input {name!r}; the model takes {_takes(spec)}")


def _takes(spec: ModelSpec) -> str:
    return ", ".join(repr(m.name) for m in spec.inputs)


def _dataframe_split(inputs: list[InputTensor], spec: ModelSpec) -> dict[str, Any]:
    rows = -1
    for tensor in inputs:
        shape = tensor.shape
        if len(shape) == 2 and shape[1] == 1:
            shape = shape[:1]
        if len(shape) != 1:
            raise BadTensor(
                f"input {tensor.name!r} has shape {tensor.shape}; a column takes [-1]"
                " (one value per row)"
            )
        if rows >= 0 and shape[0] != rows:
            raise BadTensor(f"input {tensor.name!r} has {shape[0]} rows, the other inputs {rows}")
        rows = shape[0]
    columns = [t.data if t.datatype != "BYTES" else _column(t, spec.by_name.get(t.name))
               for t in inputs]  # fmt: skip
    data = list(zip(*columns, strict=True))  # tuples: json.dumps writes them as lists
    if spec.positional_columns:
        return {"data": data}
    return {"columns": [t.name for t in inputs], "data": data}


def _column(tensor: InputTensor, meta: TensorMeta | None) -> list[Any]:
    values = tensor.data
    if values and type(values[0]) is bytes:
        # Binary BYTES: MLflow's JSON carries a binary column base64-encoded, text as text.
        if meta is not None and meta.mlflow_type == "binary":
            return [base64.b64encode(v).decode() for v in values]
        try:
            return [v.decode() for v in values]
        except UnicodeDecodeError:
            raise BadTensor(f"input {tensor.name!r}: BYTES for text must be UTF-8") from None
    return values


def _tensor_value(tensor: InputTensor, meta: TensorMeta | None) -> Any:
    if meta is not None and meta.shape:
        fits = len(meta.shape) == len(tensor.shape) and all(
            want in (-1, got) for want, got in zip(meta.shape, tensor.shape, strict=True)
        )
        if not fits:
            raise BadTensor(
                f"input {tensor.name!r} has shape {tensor.shape};"
                f" the model takes {list(meta.shape)}"
            )
    values = _column(tensor, meta)
    for dim in reversed(tensor.shape[1:]):
        values = [values[i : i + dim] for i in range(0, len(values), dim)] if dim else []
    return values
