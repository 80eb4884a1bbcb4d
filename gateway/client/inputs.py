"""Input files cut into request-sized chunks of rows, read as they are sent.

A CSV file goes out as CSV chunks, each with the header line; a JSON-lines file
(one record per line) as `dataframe_records` chunks; a single MLflow JSON
document (`dataframe_split`, `dataframe_records`, `instances`, `inputs`) as the
same format cut by rows, its `params` kept in every chunk. Only one chunk of
rows is in memory at a time, except for a single JSON document, which has to be
parsed whole.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

MLFLOW_KEYS = ("dataframe_split", "dataframe_records", "instances", "inputs")


class InputError(Exception):
    """The input file cannot be read as the format it was given as."""


@dataclass(frozen=True)
class Chunk:
    body: bytes
    content_type: str
    first_row: int  # 1-based number of its first row in the file
    rows: int | None  # None when the rows cannot be counted (named tensors)


class CountingReader(io.RawIOBase):
    """A binary file that counts the bytes read from it, for a progress percentage."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._raw.read(len(buffer))
        buffer[: len(data)] = data
        self.count += len(data)
        return len(data)

    def close(self) -> None:
        self._raw.close()
        super().close()


def open_counted(name: str) -> tuple[CountingReader, int | None]:
    """The file (or stdin for "-") and its size when known."""
    if name == "-":
        return CountingReader(sys.stdin.buffer), None
    file = Path(name)
    try:
        return CountingReader(file.open("rb")), file.stat().st_size
    except OSError as exc:
        raise InputError(f"cannot read {name}: {exc.strerror or exc}") from None


def csv_chunks(raw: CountingReader, rows_per_chunk: int) -> Iterator[Chunk]:
    text = io.TextIOWrapper(io.BufferedReader(raw), encoding="utf-8-sig", newline="")
    reader = csv.reader(text)
    try:
        header = next(reader, None)
        if not header:
            raise InputError("the CSV file is empty: it needs a header line and rows")
        number = 1
        while True:
            rows = _take(reader, rows_per_chunk)
            if not rows:
                return
            out = io.StringIO()
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)
            yield Chunk(out.getvalue().encode(), "text/csv", number, len(rows))
            number += len(rows)
    except (csv.Error, UnicodeDecodeError) as exc:
        raise InputError(f"the CSV file cannot be read near row {reader.line_num}: {exc}") from None


def json_chunks(raw: CountingReader, rows_per_chunk: int) -> Iterator[Chunk]:
    """JSON lines, or one MLflow JSON document (told apart by its first line)."""
    text = io.TextIOWrapper(io.BufferedReader(raw), encoding="utf-8-sig")
    first, line_no = "", 0
    for line in text:
        line_no += 1
        if line.strip():
            first = line
            break
    if not first:
        raise InputError("the JSON file is empty")
    try:
        head = json.loads(first)
    except ValueError:
        head = None  # a document spread over lines
    if _is_record(head):
        yield from _json_lines(head, line_no, text, rows_per_chunk)
        return
    try:
        document = json.loads(first + text.read())
    except ValueError as exc:
        raise InputError(f"the file is neither JSON lines nor one JSON document: {exc}") from None
    yield from document_chunks(document, rows_per_chunk)


def _is_record(head: Any) -> bool:
    """A JSON-lines record, not a one-line MLflow document."""
    if not isinstance(head, dict):
        return False
    return not (set(head) & set(MLFLOW_KEYS) and set(head) <= {*MLFLOW_KEYS, "params"})


def _json_lines(
    head: dict[str, Any], line_no: int, lines: Iterator[str], size: int
) -> Iterator[Chunk]:
    batch: list[Any] = [head]
    number = 1
    for line in lines:
        line_no += 1
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise InputError(f"line {line_no} is not JSON: {exc}") from None
        if not isinstance(record, dict):
            raise InputError(f"line {line_no} is not a JSON object like the first line")
        if len(batch) == size:
            yield _json_chunk({"dataframe_records": batch}, number, len(batch))
            number += len(batch)
            batch = []
        batch.append(record)
    if batch:
        yield _json_chunk({"dataframe_records": batch}, number, len(batch))


def document_chunks(document: Any, size: int) -> Iterator[Chunk]:
    """One MLflow request body cut into bodies of at most `size` rows each."""
    if not isinstance(document, dict) or not set(document) & set(MLFLOW_KEYS):
        raise InputError(f"a JSON document needs one of the keys {', '.join(MLFLOW_KEYS)}")
    params = {"params": document["params"]} if "params" in document else {}
    if "dataframe_split" in document:
        split = document["dataframe_split"]
        if not isinstance(split, dict) or not isinstance(split.get("data"), list):
            raise InputError("dataframe_split needs a list under 'data'")
        data, index = split["data"], split.get("index")
        for start in range(0, len(data), size):
            part = {**split, "data": data[start : start + size]}
            if isinstance(index, list):
                part["index"] = index[start : start + size]
            rows = len(part["data"])
            yield _json_chunk({"dataframe_split": part, **params}, start + 1, rows)
        return
    key = next(k for k in MLFLOW_KEYS if k in document)
    records = document[key]
    if not isinstance(records, list):  # named tensors: sent whole
        yield _json_chunk(document, 1, None)
        return
    for start in range(0, len(records), size):
        piece = records[start : start + size]
        yield _json_chunk({key: piece, **params}, start + 1, len(piece))


def _json_chunk(body: dict[str, Any], first_row: int, rows: int | None) -> Chunk:
    return Chunk(json.dumps(body).encode(), "application/json", first_row, rows)


def _take(reader: Iterator[list[str]], n: int) -> list[list[str]]:
    rows: list[list[str]] = []
    for row in reader:
        if row:  # a blank line is no row
            rows.append(row)
            if len(rows) == n:
                break
    return rows
