"""MLflow's scoring answer as Open Inference Protocol (V2) outputs.

MLflow answers `{"predictions": P}` where P is a list (one value or row per
input row), a list of records (a DataFrame) or a dict of named tensors. Each
becomes an output with a name (the signature's, else `output-0`), a shape read
off the nesting, and a datatype: the signature's when the values fit it, else
what the values are. Outputs asked for as binary are sent with the binary
tensor extension: the JSON header, then each output's raw little-endian bytes.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from gateway.dataplane.v2_protocol import (
    NUMPY_DTYPES,
    OUTPUT_PREFIX,
    BadTensor,
    InferRequest,
    ModelSpec,
    TensorMeta,
    UnexpectedAnswer,
)


@dataclass(slots=True)
class OutputTensor:
    name: str
    datatype: str
    shape: list[int]
    data: list[Any]


def v2_answer(answer: bytes, request: InferRequest, spec: ModelSpec, model_name: str,
              version: str) -> tuple[bytes, int | None]:  # fmt: skip
    """The V2 response body of MLflow's answer, and its JSON header's length when binary."""
    try:
        doc = json.loads(answer)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise UnexpectedAnswer("the backend's answer is not JSON") from None
    if not isinstance(doc, dict) or "predictions" not in doc:
        raise UnexpectedAnswer("the backend's answer has no 'predictions'")
    outputs = _outputs(doc["predictions"], spec)
    binary = dict.fromkeys((o.name for o in outputs), request.binary_output)
    if request.outputs is not None:
        produced = {o.name: o for o in outputs}
        chosen = []
        for name, as_binary in request.outputs:
            if name not in produced:
                gives = ", ".join(map(repr, produced))
                raise BadTensor(f"unknown output {name!r}; the model gives {gives}")
            chosen.append(produced[name])
            binary[name] = as_binary or request.binary_output
        outputs = chosen
    rendered, chunks = [], []
    for out in outputs:
        item: dict[str, Any] = {"name": out.name, "datatype": out.datatype, "shape": out.shape}
        if binary[out.name]:
            chunk = _to_binary(out)
            item["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        else:
            item["data"] = out.data
        rendered.append(item)
    body: dict[str, Any] = {"model_name": model_name, "model_version": version}
    if request.id is not None:
        body["id"] = request.id
    body["outputs"] = rendered
    header = json.dumps(body).encode()
    if not chunks:
        return header, None
    return header + b"".join(chunks), len(header)


def _outputs(predictions: Any, spec: ModelSpec) -> list[OutputTensor]:
    declared = {m.name: m for m in spec.outputs}
    if isinstance(predictions, dict):  # named outputs (a dict of tensors)
        items = list(predictions.items())
    elif (
        isinstance(predictions, list) and predictions and all(type(r) is dict for r in predictions)
    ):
        names = list(dict.fromkeys(k for row in predictions for k in row))  # a DataFrame's rows
        items = [(n, [row.get(n) for row in predictions]) for n in names]
    else:
        default = spec.outputs[0].name if len(spec.outputs) == 1 else f"{OUTPUT_PREFIX}0"
        items = [(default, predictions)]
    return [_output(str(name), value, declared.get(str(name))) for name, value in items]


def _output(name: str, value: Any, meta: TensorMeta | None) -> OutputTensor:
    if not isinstance(value, list):
        value = [value]
    shape = _shape(value)
    flat = _flat_to(value, shape)
    if flat is None:  # ragged rows: each row as one JSON text
        shape, flat = [len(value)], [json.dumps(v) for v in value]
    datatype = _datatype(flat)
    if meta is not None and _fits(meta.datatype, datatype):
        datatype = meta.datatype
    if datatype == "BYTES":
        flat = [v if type(v) is str else json.dumps(v) for v in flat]
    return OutputTensor(name, datatype, shape, flat)


def _shape(value: list[Any]) -> list[int]:
    shape, probe = [], value
    while type(probe) is list:
        shape.append(len(probe))
        if not probe:
            break
        probe = probe[0]
    return shape


def _flat_to(value: list[Any], shape: list[int]) -> list[Any] | None:
    """The row-major values of `value` if it is a regular array of `shape`, else None."""
    level: list[Any] = [value]
    for size in shape:
        below: list[Any] = []
        for node in level:
            if type(node) is not list or len(node) != size:
                return None
            below.extend(node)
        level = below
    return None if any(type(v) is list for v in level) else level


def _datatype(flat: list[Any]) -> str:
    kinds = {type(v) for v in flat}
    if not kinds:
        return "FP64"
    if kinds == {bool}:
        return "BOOL"
    if kinds == {int}:
        return "INT64"
    if kinds <= {int, float}:
        return "FP64"
    return "BYTES"


def _fits(declared: str, found: str) -> bool:
    """Whether values typed `found` can be sent as the signature's `declared` datatype."""
    if declared == found:
        return True
    if declared.startswith("FP"):
        return found in ("FP64", "INT64")
    if declared.startswith(("INT", "UINT")):
        return found == "INT64"
    return False


def _to_binary(out: OutputTensor) -> bytes:
    if out.datatype == "BYTES":
        parts = []
        for value in out.data:
            raw = value.encode()
            parts.append(struct.pack("<I", len(raw)))
            parts.append(raw)
        return b"".join(parts)
    try:
        return np.asarray(out.data, dtype=NUMPY_DTYPES[out.datatype]).tobytes()
    except (OverflowError, ValueError, TypeError) as exc:
        raise UnexpectedAnswer(f"output {out.name!r} does not fit {out.datatype}: {exc}") from None
