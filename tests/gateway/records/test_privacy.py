"""Redaction in every MLflow input format, the installation key, and sampling by request id."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from gateway.records.privacy import Redactor, installation_key, parse_rules, sampled_in
from gateway.records.rows import input_rows

KEY = b"k" * 32
R = Redactor({"ssn": "drop", "email": "hash", "feature_1": "drop"}, KEY)
ROWS = [{"ssn": "111", "email": "a@x", "age": 30}, {"ssn": "222", "email": "b@x", "age": 40}]
CLEAN = [{"email": R.hash("a@x"), "age": 30}, {"email": R.hash("b@x"), "age": 40}]


def _rows(body: str | None, content_type: str = "application/json") -> list[dict]:
    assert body is not None
    return input_rows(body, content_type)


@pytest.mark.parametrize(
    "payload",
    [
        {"dataframe_split": {"columns": ["ssn", "email", "age"],
                             "data": [["111", "a@x", 30], ["222", "b@x", 40]]}},
        {"dataframe_records": ROWS},
        {"instances": ROWS},
        {"inputs": {"ssn": ["111", "222"], "email": ["a@x", "b@x"], "age": [30, 40]}},
    ],
    ids=["dataframe_split", "dataframe_records", "instances", "inputs-columnar"],
)  # fmt: skip
def test_named_fields_are_dropped_or_hashed_in_every_json_format(payload: dict) -> None:
    body = R.apply("application/json", json.dumps(payload).encode())
    assert body is not None and "111" not in body and "a@x" not in body and "ssn" not in body
    assert _rows(body) == CLEAN


def test_csv_columns_are_dropped_or_hashed() -> None:
    body = R.apply("text/csv", b"ssn,email,age\n111,a@x,30\n222,b@x,40\n")
    assert _rows(body, "text/csv") == [{k: str(v) for k, v in row.items()} for row in CLEAN]


def test_a_value_hashes_alike_from_json_and_csv() -> None:
    """7 sent as JSON and "7" read from a CSV are one value: they must group and join."""
    assert R.hash(7) == R.hash("7") and R.hash(1.5) == R.hash("1.5") and R.hash(7) != R.hash(8)
    other = Redactor(R.rules, b"z" * 32)
    assert other.hash("a@x") != R.hash("a@x")  # keyed: no key, no dictionary attack


def test_positional_values_are_named_as_the_export_names_them() -> None:
    body = R.apply("application/json", json.dumps({"instances": [[1, 2, 3]]}).encode())
    assert _rows(body) == [{"feature_0": 1, "feature_1": 3}]  # feature_1 (the 2) dropped
    split = R.apply("application/json",
                    json.dumps({"dataframe_split": {"data": [[1, 2, 3]]}}).encode())  # fmt: skip
    assert json.loads(split or "")["dataframe_split"]["data"] == [[1, 3]]


def test_floats_survive_redaction_exactly() -> None:
    exact = [-0.044641636506989144, 0.1 + 0.2, 5e-324]
    body = R.apply(
        "application/json", json.dumps({"instances": [{"a": v} for v in exact]}).encode()
    )
    assert [row["a"] for row in _rows(body)] == exact


@pytest.mark.parametrize("body", [b"{not json", b"\xff\xfe", b"[1, 2]"])
def test_a_body_that_cannot_be_read_is_not_stored(body: bytes) -> None:
    assert R.apply("application/json", body) is None


def test_rules_say_what_happens_to_each_field() -> None:
    assert parse_rules("email, ssn:hash ,notes:drop") == {
        "email": "drop", "ssn": "hash", "notes": "drop"}  # fmt: skip
    assert parse_rules("") == {} and parse_rules(None) == {}
    for bad in ("a:encrypt", "a,,b", ":hash"):
        with pytest.raises(ValueError, match="field name"):
            parse_rules(bad)


def test_the_installation_key_is_made_once_and_private(tmp_path: Path) -> None:
    key = installation_key(tmp_path)
    assert len(key) == 32 and installation_key(tmp_path) == key
    mode = stat.S_IMODE((tmp_path / "redaction.key").stat().st_mode)
    assert mode == 0o600


def test_sampling_is_decided_by_the_request_id_alone() -> None:
    ids = [f"id-{i}" for i in range(2000)]
    kept = [i for i in ids if sampled_in(i, 0.25)]
    assert kept == [i for i in ids if sampled_in(i, 0.25)]
    assert 0.2 < len(kept) / len(ids) < 0.3
    # A larger fraction keeps a superset: raising the rate never drops a kept call.
    assert set(kept) <= {i for i in ids if sampled_in(i, 0.5)}
    assert all(sampled_in(i, 1.0) for i in ids) and not any(sampled_in(i, 0.0) for i in ids)
