"""Reading ground truth by request id (JSON or CSV) and joining it to logged calls."""

from __future__ import annotations

import json

import pytest

from gateway.quality.feedback import FeedbackError, join, parse_csv, parse_json
from gateway.records.stores.base import InferenceRecord


def _call(record_id: str, request_id: str, rows: int, truth: list | None = None) -> InferenceRecord:
    return InferenceRecord(record_id, "m", "1", 1.0, "application/json",
                           json.dumps({"instances": [[i] for i in range(rows)]}),
                           json.dumps({"predictions": [0] * rows}), request_id, truth)  # fmt: skip


def test_json_feedback_by_id_with_one_value_per_row() -> None:
    body = json.dumps([{"request_id": "a", "result": 1}, {"request_id": "b", "result": [0, 2]},
                       {"request_id": "a", "result": 0}]).encode()  # fmt: skip
    feedback = parse_json(body)
    assert feedback.labels == {"a": [1], "b": [0, 2]} and feedback.duplicates == ["a"]


def test_csv_feedback_gathers_the_rows_of_a_call_in_order() -> None:
    body = b"request_id,result\na,1\nb,0\nb,2.5\nc,\n"
    assert parse_csv(body).labels == {"a": [1], "b": [0, 2.5]}  # c has no result yet


def test_a_filled_in_export_is_feedback() -> None:
    body = b"x,prediction,ground_truth,request_id,timestamp\n1.5,0,1,r1,t\n2.5,1,1,r1,t\n"
    assert parse_csv(body).labels == {"r1": [1, 1]}


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"{", "not valid JSON"),
        (b"[]", "non-empty JSON list"),
        (b'{"request_id": "a"}', "non-empty JSON list"),
        (b'[{"request_id": "a"}]', '"request_id" and "result"'),
        (b'[{"request_id": "", "result": 1}]', "request_id"),
        (b'[{"request_id": "a", "result": null}]', "null"),
        (b'[{"request_id": "a", "result": {"x": 1}}]', "number, text or a boolean"),
        (b'[{"request_id": "a", "result": []}]', "empty list"),
        (b'[{"request_id": "a", "result": 123456789012345678901234567890}]', "64 bits"),
        (b'[{"request_id": "a", "result": NaN}]', "finite"),
    ],
)
def test_json_mistakes_say_what_is_wrong(body: bytes, needle: str) -> None:
    with pytest.raises(FeedbackError, match=needle):
        parse_json(body)


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"id,value\na,1\n", "request_id and result"),
        (b"request_id,result\n", "no line"),
        (b"request_id,result\n,1\n", "request_id is empty"),
        (b"\xff\xfe", "UTF-8"),
    ],
)
def test_csv_mistakes_say_what_is_wrong(body: bytes, needle: str) -> None:
    with pytest.raises(FeedbackError, match=needle):
        parse_csv(body)


def test_join_reports_every_id_once() -> None:
    calls = [_call("r1", "one", 1), _call("r2", "two", 2), _call("r3", "done", 1, truth=[1]),
             _call("r4", "twice", 1), _call("r5", "twice", 1)]  # fmt: skip
    feedback = parse_json(json.dumps([
        {"request_id": "one", "result": 1}, {"request_id": "two", "result": [1]},
        {"request_id": "done", "result": 0}, {"request_id": "ghost", "result": 1},
        {"request_id": "twice", "result": 0}]).encode())  # fmt: skip
    joined = join(feedback, calls)
    assert joined.matched == {"one": ["r1"], "twice": ["r4", "r5"]}
    assert joined.labels == [("r1", [1]), ("r4", [0]), ("r5", [0])]
    assert joined.unknown == ["ghost"] and joined.already_labelled == ["done"]
    assert [r["request_id"] for r in joined.rejected] == ["two"]
    assert "1 results were given for a call of 2 input rows" in joined.rejected[0]["detail"]
