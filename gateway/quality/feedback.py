"""Ground truth sent later, by request id: read the body, then join it to the logged calls.

Two bodies are understood:

- JSON: `[{"request_id": "...", "result": <value or list>}, ...]`: a list gives one
  value per input row of a multi-row call, a single value labels a one-row call;
- CSV with a header naming `request_id` and `result` (or `ground_truth`, so the
  dataset export itself, filled in, can be sent back): one line per input row,
  the lines of one call in row order. Lines with an empty result are skipped.

Values are scalars (numbers, text, booleans): labels or targets, as the
metrics compare them with predictions. Pure functions; no I/O.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.records.rows import row_count
from gateway.records.stores.base import InferenceRecord

RESULT_COLUMNS = ("result", "ground_truth")
MAX_LISTED = 100  # ids listed per outcome in an answer; the counts are always whole
_INT64 = 2**63


class FeedbackError(ValueError):
    """The body is not feedback this endpoint can read; the message says why."""


@dataclass
class Feedback:
    """Ground truth by request id, in the order it came, and the ids that came twice."""

    labels: dict[str, list[Any]] = field(default_factory=dict)
    duplicates: list[str] = field(default_factory=list)


@dataclass
class Join:
    """What became of each id: labelled now, unknown, labelled before, or refused."""

    labels: list[tuple[str, list[Any]]] = field(default_factory=list)  # (record id, truth)
    matched: dict[str, list[str]] = field(default_factory=dict)  # request id -> record ids
    unknown: list[str] = field(default_factory=list)
    already_labelled: list[str] = field(default_factory=list)
    rejected: list[dict[str, str]] = field(default_factory=list)


def _scalar(value: Any, where: str) -> Any:
    if value is None:
        raise FeedbackError(f"{where}: a result cannot be null")
    if isinstance(value, float) and not math.isfinite(value):
        raise FeedbackError(f"{where}: a result must be a finite number")
    if isinstance(value, bool | str | float):
        return value
    if isinstance(value, int):
        if not -_INT64 <= value < _INT64:
            raise FeedbackError(f"{where}: the integer {value} is beyond 64 bits")
        return value
    raise FeedbackError(f"{where}: a result must be a number, text or a boolean")


def _request_id(value: Any, where: str) -> str:
    if not isinstance(value, str | int) or isinstance(value, bool) or str(value) == "":
        raise FeedbackError(f"{where}: request_id must be a non-empty string")
    return str(value)


def parse_json(body: bytes) -> Feedback:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise FeedbackError(f"the body is not valid JSON: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("feedback"), list):
        data = data["feedback"]
    if not isinstance(data, list) or not data:
        raise FeedbackError(
            'send a non-empty JSON list of {"request_id": ..., "result": ...} objects'
        )
    feedback = Feedback()
    for i, item in enumerate(data):
        where = f"item {i}"
        if not isinstance(item, dict) or "request_id" not in item or "result" not in item:
            raise FeedbackError(f'{where} is not an object with "request_id" and "result"')
        rid = _request_id(item["request_id"], where)
        result = item["result"]
        values = result if isinstance(result, list) else [result]
        if not values:
            raise FeedbackError(f"{where}: result is an empty list")
        values = [_scalar(v, where) for v in values]
        if rid in feedback.labels:
            feedback.duplicates.append(rid)
            continue
        feedback.labels[rid] = values
    return feedback


def _cell(text: str) -> Any:
    """A CSV cell as the (finite) number it spells, else the text."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return text
    return value if math.isfinite(value) else text


def parse_csv(body: bytes) -> Feedback:
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise FeedbackError("the CSV is not UTF-8 text") from None
    try:
        reader = csv.DictReader(io.StringIO(text))
        header = reader.fieldnames or []
        column = next((c for c in RESULT_COLUMNS if c in header), None)
        if "request_id" not in header or column is None:
            raise FeedbackError("the CSV header must name request_id and result (or ground_truth)")
        feedback = Feedback()
        for line, row in enumerate(reader, start=2):
            rid, value = (row.get("request_id") or "").strip(), row.get(column)
            if value is None or value.strip() == "":
                continue
            if not rid:
                raise FeedbackError(f"line {line}: request_id is empty")
            feedback.labels.setdefault(rid, []).append(
                _scalar(_cell(value.strip()), f"line {line}")
            )
    except csv.Error as exc:
        raise FeedbackError(f"the body is not a readable CSV: {exc}") from None
    if not feedback.labels:
        raise FeedbackError("the CSV has no line with both a request_id and a result")
    return feedback


def join(feedback: Feedback, calls: Sequence[InferenceRecord]) -> Join:
    """Match ground truth to the logged calls that carry its request id.

    A call gets a label only if it has none yet and the label has one value per
    input row; a request id reused by several calls labels each of them.
    """
    by_id: dict[str, list[InferenceRecord]] = {}
    for call in calls:
        if call.request_id is not None:
            by_id.setdefault(call.request_id, []).append(call)
    out = Join()
    for rid, values in feedback.labels.items():
        found = by_id.get(rid)
        if not found:
            out.unknown.append(rid)
            continue
        open_calls = [c for c in found if c.ground_truth is None]
        if not open_calls:
            out.already_labelled.append(rid)
            continue
        fitting = [c for c in open_calls if row_count(c) in (0, len(values))]
        if not fitting:
            rows = row_count(open_calls[0])
            out.rejected.append({"request_id": rid, "detail": (
                f"{len(values)} results were given for a call of {rows} input rows;"
                " give one result per row")})  # fmt: skip
            continue
        out.matched[rid] = [c.id for c in fitting]
        out.labels.extend((c.id, values) for c in fitting)
    return out
