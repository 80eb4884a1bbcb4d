"""At most N rows of one call are logged; the rest are dropped and counted.

A single 63 MB call was a 1M-row log entry: its export took 21.6 s and stalled
the gateway, its report took 1.78 GB. So the writer keeps the first
GATEWAY_LOG_MAX_ROWS_PER_CALL rows of a call's inputs and of its predictions,
and counts the rows it dropped.

The cut is made on the text, not on parsed JSON: the rows are found with a
scanner that steps over one value at a time (a regular expression for plain
rows, the JSON decoder for the others), so a huge body never becomes a huge
Python object, and the worker thread running this gives the GIL back between
rows instead of holding it for one long `json.loads`. What is kept is the
original text, byte for byte, with the dropped rows cut out, so every logged
float stays exact. A text too short to hold more rows than the cap is left as
it is without a look. CSV bodies keep their header and first N lines (a quoted
field with a line break in it counts as two lines).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

_WS = re.compile(r"[ \t\n\r]*")
# One row or value without nesting or strings inside: most rows of a numeric table.
_PLAIN = re.compile(r"\[[^\[\]{}\"]*\]|-?[0-9][0-9.eE+\-]*|true|false|null")
_DECODER = json.JSONDecoder()
_INPUT_ROWS = ("dataframe_records", "instances", "inputs")
_ANSWER_ROWS = ("predictions", "outputs")

# (where the kept rows end, where the array closes, rows dropped)
Cut = tuple[int, int, int]


def cap_call(
    content_type: str, inputs: str, predictions: str | None, max_rows: int
) -> tuple[str, str | None, int]:
    """The call's inputs and predictions with at most `max_rows` rows each, and the
    number of rows dropped."""
    inputs, dropped = cap_inputs(content_type, inputs, max_rows)
    if predictions is not None:
        predictions, dropped_answers = cap_answer(predictions, max_rows)
        dropped = max(dropped, dropped_answers)
    return inputs, predictions, dropped


def may_need_cap(size: int, max_rows: int) -> bool:
    """False when a text of `size` characters cannot hold more than `max_rows` rows
    (every row takes at least two: the value and a separator)."""
    return size > 2 * max_rows


def cap_inputs(content_type: str, text: str, max_rows: int) -> tuple[str, int]:
    if not may_need_cap(len(text), max_rows):
        return text, 0
    if "csv" in content_type:
        return _cap_lines(text, max_rows)
    return _cap_json(text, max_rows, _input_member)


def cap_answer(text: str, max_rows: int) -> tuple[str, int]:
    if not may_need_cap(len(text), max_rows):
        return text, 0
    return _cap_json(text, max_rows, _answer_member)


def _cap_lines(text: str, max_rows: int) -> tuple[str, int]:
    end = -1
    for _ in range(max_rows + 1):  # the header, then the rows kept
        end = text.find("\n", end + 1)
        if end < 0:
            return text, 0
    rest = text[end + 1 :]
    dropped = rest.count("\n") + (0 if rest.endswith("\n") or not rest else 1)
    return text[: end + 1], dropped


Member = Callable[[str, str, int, int, list[Cut]], int]


def _cap_json(text: str, max_rows: int, member: Member) -> tuple[str, int]:
    cuts: list[Cut] = []
    try:
        i = _skip(text, 0)
        if text[i] == "[" and member is _answer_member:
            _rows(text, i, max_rows, cuts)  # an answer that is a bare list of predictions
        elif text[i] == "{":
            _object(text, i, lambda key, at: member(key, text, at, max_rows, cuts))
        else:
            return text, 0
    except (ValueError, IndexError):
        return text, 0  # not the JSON a scoring server took: kept as it is
    if not cuts:
        return text, 0
    kept, position = [], 0
    for cut_at, close, _ in sorted(cuts):
        kept.append(text[position:cut_at])
        position = close
    kept.append(text[position:])
    return "".join(kept), max(dropped for _, _, dropped in cuts)


def _input_member(key: str, text: str, at: int, max_rows: int, cuts: list[Cut]) -> int:
    if key == "dataframe_split" and text[at] == "{":

        def split_member(name: str, i: int) -> int:
            if name == "data" and text[i] == "[":
                return _rows(text, i, max_rows, cuts)
            return _end(text, i)

        return _object(text, at, split_member)
    if key in _INPUT_ROWS:
        return _rows_or_columns(text, at, max_rows, cuts)
    return _end(text, at)


def _answer_member(key: str, text: str, at: int, max_rows: int, cuts: list[Cut]) -> int:
    if key in _ANSWER_ROWS:
        return _rows_or_columns(text, at, max_rows, cuts)
    return _end(text, at)


def _rows_or_columns(text: str, at: int, max_rows: int, cuts: list[Cut]) -> int:
    """A list of rows, or columns (`{"a": [...], "b": [...]}`) each cut to the same rows."""
    if text[at] == "[":
        return _rows(text, at, max_rows, cuts)
    if text[at] == "{":

        def column(name: str, i: int) -> int:
            return _rows(text, i, max_rows, cuts) if text[i] == "[" else _end(text, i)

        return _object(text, at, column)
    return _end(text, at)


def _rows(text: str, at: int, max_rows: int, cuts: list[Cut]) -> int:
    """Step over the array at `at`; note a cut when it has more than `max_rows` items."""
    i = _skip(text, at + 1)
    if text[i] == "]":
        return i + 1
    count, cut_at = 0, at + 1
    while True:
        i = _end(text, i)
        count += 1
        if count == max_rows:
            cut_at = i
        i = _skip(text, i)
        if text[i] == ",":
            i = _skip(text, i + 1)
        elif text[i] == "]":
            if count > max_rows:
                cuts.append((cut_at, i, count - max_rows))
            return i + 1
        else:
            raise ValueError(f"expected ',' or ']' at {i}")


def _object(text: str, at: int, member: Callable[[str, int], int]) -> int:
    """Step over the object at `at`, letting `member(key, value_start)` step over each value."""
    i = _skip(text, at + 1)
    if text[i] == "}":
        return i + 1
    while True:
        key, i = _DECODER.raw_decode(text, i)
        if not isinstance(key, str):
            raise ValueError(f"expected a key at {i}")
        i = _skip(text, i)
        if text[i] != ":":
            raise ValueError(f"expected ':' at {i}")
        i = _skip(text, member(key, _skip(text, i + 1)))
        if text[i] == ",":
            i = _skip(text, i + 1)
        elif text[i] == "}":
            return i + 1
        else:
            raise ValueError(f"expected ',' or '}}' at {i}")


def _end(text: str, at: int) -> int:
    """Where the JSON value at `at` ends."""
    plain = _PLAIN.match(text, at)
    if plain is not None:
        return plain.end()
    return _DECODER.raw_decode(text, at)[1]


def _skip(text: str, at: int) -> int:
    end = _WS.match(text, at)
    return end.end() if end is not None else at
