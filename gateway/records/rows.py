"""Turn logged calls into table rows: one row per input instance, with its prediction.

Every row also carries its call's ground truth (`ground_truth`, empty until
feedback arrives) and `request_id`, so an export can be labelled and sent back,
and its `arm` (`primary`: answered to the caller; `shadow`: a route's shadow copy).

Understands every MLflow scoring input (`dataframe_split`, `dataframe_records`,
`instances`, `inputs`) and CSV bodies. Pure functions; the export streams them.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from gateway.records.stores.base import InferenceRecord

Row = dict[str, Any]
# Columns every exported row ends with, in this order, after features and predictions
# (`arm` came last, so readers of the earlier columns by position are unaffected).
TAIL_COLUMNS = ("ground_truth", "request_id", "timestamp", "arm")


def _loads(value: Any) -> Any:
    if isinstance(value, str | bytes):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value


def _positional(values: list[Any]) -> Row:
    return {f"feature_{i}": v for i, v in enumerate(values)}


def _instance(value: Any) -> Row:
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, list):
        return _positional(value)
    return {"input": value}


def _columnar(columns: dict[str, Any]) -> list[Row]:
    """{"a": [1, 2], "b": [3, 4]} -> two rows; {"a": 1, "b": 3} -> one row."""
    if not columns or any(not isinstance(v, list) for v in columns.values()):
        return [dict(columns)]
    n = min(len(v) for v in columns.values())
    return [{k: v[i] for k, v in columns.items()} for i in range(n)]


def input_rows(payload: Any, content_type: str = "application/json") -> list[Row]:
    """The instances of one request body, as dicts of feature -> value."""
    if "csv" in content_type:
        text = payload.decode() if isinstance(payload, bytes) else str(payload or "")
        return [dict(r) for r in csv.DictReader(io.StringIO(text))]
    data = _loads(payload)
    if not isinstance(data, dict):
        return []
    if "dataframe_split" in data:
        split = data["dataframe_split"] or {}
        columns = split.get("columns") or []
        rows = split.get("data") or []
        if not columns and rows:
            return [_instance(r) for r in rows]
        return [dict(zip(columns, r, strict=False)) for r in rows]
    if "dataframe_records" in data:
        return [_instance(r) for r in data["dataframe_records"] or []]
    for key in ("instances", "inputs"):
        if key in data:
            value = data[key]
            if isinstance(value, dict):
                return _columnar(value)
            if isinstance(value, list):
                return [_instance(v) for v in value]
            return [{"input": value}]
    return []


def prediction_values(answer: Any) -> list[Any]:
    """The per-instance predictions of a backend answer."""
    data = _loads(answer)
    if isinstance(data, dict):
        for key in ("predictions", "outputs"):
            if key in data:
                data = data[key]
                break
    if isinstance(data, dict):  # columnar predictions: {"col": [..], ...}
        return _columnar(data)
    if isinstance(data, list):
        return data
    return [] if data is None else [data]


def _prediction_columns(value: Any) -> Row:
    if isinstance(value, dict):
        return {f"prediction_{k}": v for k, v in value.items()}
    if isinstance(value, list):
        return {"prediction": json.dumps(value)}
    return {"prediction": value}


def record_rows(record: InferenceRecord) -> Iterator[Row]:
    """One row per instance of a logged call: features, prediction, ground truth, id, time, arm."""
    inputs = input_rows(record.inputs, record.content_type)
    predictions = prediction_values(record.predictions)
    truth = record.ground_truth or []
    timestamp = datetime.fromtimestamp(record.ts, UTC).isoformat()
    for i, row in enumerate(inputs):
        out = dict(row)
        if i < len(predictions):
            out.update(_prediction_columns(predictions[i]))
        out["ground_truth"] = truth[i] if i < len(truth) else None
        out["request_id"] = record.request_id
        out["timestamp"] = timestamp
        out["arm"] = record.arm
        yield out


def row_count(record: InferenceRecord) -> int:
    """How many instances a logged call had: its predictions, else its readable inputs."""
    return len(prediction_values(record.predictions)) or len(
        input_rows(record.inputs, record.content_type)
    )


def labelled_pairs(records: list[InferenceRecord]) -> tuple[list[Any], list[Any]]:
    """(ground truth, prediction) of every labelled row of these calls, in order."""
    truth: list[Any] = []
    predicted: list[Any] = []
    for record in records:
        labels = record.ground_truth or []
        values = prediction_values(record.predictions)
        n = min(len(labels), len(values))
        truth.extend(labels[:n])
        predicted.extend(values[:n])
    return truth, predicted


def csv_line(values: list[Any]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(
        ["" if v is None else json.dumps(v) if isinstance(v, dict | list) else v for v in values]
    )
    return buffer.getvalue()


def columns_of(records: list[InferenceRecord]) -> dict[str, None]:
    """Every column the rows of these calls have, in first-seen order."""
    columns: dict[str, None] = {}
    for record in records:
        for row in record_rows(record):
            columns.update(dict.fromkeys(row))
    return columns


def ordered_columns(columns: dict[str, None]) -> list[str]:
    """Features and predictions in first-seen order, then the tail columns."""
    if not columns:
        return []
    return [c for c in columns if c not in TAIL_COLUMNS] + list(TAIL_COLUMNS)


def csv_chunk(records: list[InferenceRecord], columns: list[str]) -> str:
    return "".join(
        csv_line([row.get(c) for c in columns]) for record in records for row in record_rows(record)
    )


def jsonl_chunk(records: list[InferenceRecord]) -> str:
    return "".join(json.dumps(row) + "\n" for record in records for row in record_rows(record))
