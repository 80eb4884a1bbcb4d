"""Normalising every MLflow input format into rows, and predictions into values."""

from __future__ import annotations

import csv
import io
import json

import pytest

from gateway.records.rows import (
    columns_of,
    csv_chunk,
    csv_line,
    input_rows,
    jsonl_chunk,
    labelled_pairs,
    ordered_columns,
    prediction_values,
    record_rows,
    row_count,
)
from gateway.records.stores.base import InferenceRecord

ROWS = [{"a": 1.0, "b": "x"}, {"a": 2.0, "b": "y"}]


@pytest.mark.parametrize(
    "payload",
    [
        {"dataframe_split": {"columns": ["a", "b"], "data": [[1.0, "x"], [2.0, "y"]]}},
        {
            "dataframe_split": {
                "index": [5, 6],
                "columns": ["a", "b"],
                "data": [[1.0, "x"], [2.0, "y"]],
            }
        },
        {"dataframe_records": ROWS},
        {"instances": ROWS},
        {"inputs": ROWS},
        {"inputs": {"a": [1.0, 2.0], "b": ["x", "y"]}},
        {"instances": {"a": [1.0, 2.0], "b": ["x", "y"]}},
    ],
)
def test_json_formats(payload: dict) -> None:
    assert input_rows(json.dumps(payload)) == ROWS
    assert input_rows(payload) == ROWS  # already parsed (MongoDB documents)


def test_tensors_get_positional_columns() -> None:
    assert input_rows('{"instances": [[1, 2], [3, 4]]}') == [
        {"feature_0": 1, "feature_1": 2},
        {"feature_0": 3, "feature_1": 4},
    ]
    assert input_rows('{"inputs": [7, 8]}') == [{"input": 7}, {"input": 8}]


def test_csv_and_garbage() -> None:
    assert input_rows("a,b\n1,x\n2,y\n", "text/csv") == [{"a": "1", "b": "x"}, {"a": "2", "b": "y"}]
    assert input_rows("{not json") == []
    assert input_rows('{"unknown": 1}') == []


@pytest.mark.parametrize(
    ("answer", "values"),
    [
        ('{"predictions": [1, 0]}', [1, 0]),
        ('{"predictions": {"p": [0.1, 0.9]}}', [{"p": 0.1}, {"p": 0.9}]),
        ("[3, 4]", [3, 4]),
        ('{"outputs": [[0.2, 0.8]]}', [[0.2, 0.8]]),
        (None, []),
    ],
)
def test_prediction_values(answer: str | None, values: list) -> None:
    assert prediction_values(answer) == values


def test_record_rows_pairs_inputs_with_predictions() -> None:
    record = InferenceRecord("i", "m", "1", 0.0, "application/json",
                             json.dumps({"dataframe_records": ROWS}),
                             '{"predictions": [{"label": 1, "p": 0.7}, {"label": 0, "p": 0.6}]}')  # fmt: skip
    rows = list(record_rows(record))
    assert rows[0] == {"a": 1.0, "b": "x", "prediction_label": 1, "prediction_p": 0.7,
                       "ground_truth": None, "request_id": None,
                       "timestamp": "1970-01-01T00:00:00+00:00", "arm": "primary"}  # fmt: skip


def test_rows_carry_their_calls_ground_truth_and_request_id() -> None:
    record = InferenceRecord("i", "m", "1", 0.0, "application/json",
                             json.dumps({"dataframe_records": ROWS}), '{"predictions": [1, 0]}',
                             request_id="req-7", ground_truth=[1, 1])  # fmt: skip
    rows = list(record_rows(record))
    assert [(r["prediction"], r["ground_truth"], r["request_id"]) for r in rows] == [
        (1, 1, "req-7"), (0, 1, "req-7")]  # fmt: skip
    assert labelled_pairs([record]) == ([1, 1], [1, 0])
    assert row_count(record) == 2
    columns = ordered_columns(columns_of([record]))
    assert columns[-4:] == ["ground_truth", "request_id", "timestamp", "arm"]


def test_rows_carry_the_arm_that_answered() -> None:
    record = InferenceRecord("i", "m", "2", 0.0, "application/json",
                             json.dumps({"dataframe_records": ROWS}), '{"predictions": [1, 0]}',
                             arm="shadow")  # fmt: skip
    assert [r["arm"] for r in record_rows(record)] == ["shadow", "shadow"]
    [line] = jsonl_chunk([record]).splitlines()[:1]
    assert json.loads(line)["arm"] == "shadow"


# Floats whose shortest exact text has 17 significant digits, or that sit at the
# edges of the double range: any formatting or parsing short of repr changes them.
EXACT = [-0.044641636506989144, 0.05068011873981862, 0.1 + 0.2, 5e-324,
         1.7976931348623157e308, -0.0, 123456789.12345679, 1e-7]  # fmt: skip
COLUMNS = [f"x{i}" for i in range(len(EXACT))]


@pytest.mark.parametrize("parsed", [False, True], ids=["text", "document"])
def test_export_keeps_every_float_exact(parsed: bool) -> None:
    payload = {"dataframe_split": {"columns": COLUMNS, "data": [EXACT, EXACT[::-1]]}}
    answer = {"predictions": [0.30000000000000004, -0.044641636506989144]}
    record = InferenceRecord("i", "m", "1", 0.0, "application/json",
                             payload if parsed else json.dumps(payload),
                             answer if parsed else json.dumps(answer))  # fmt: skip
    columns = list(columns_of([record]))
    exported = list(csv.DictReader(io.StringIO(csv_line(columns) + csv_chunk([record], columns))))
    assert [[repr(float(row[c])) for c in COLUMNS] for row in exported] == [
        [repr(v) for v in EXACT],
        [repr(v) for v in EXACT[::-1]],
    ]
    assert [float(row["prediction"]) for row in exported] == answer["predictions"]
    lines = [json.loads(line) for line in jsonl_chunk([record]).splitlines()]
    assert [[repr(line[c]) for c in COLUMNS] for line in lines] == [
        [repr(v) for v in EXACT],
        [repr(v) for v in EXACT[::-1]],
    ]
