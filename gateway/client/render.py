"""What the client prints: tables, replica summaries, predictions, and a live status line.

Human output goes to stdout as plain aligned text; progress goes to stderr, so a
pipe (`modelgw predict ... > out.csv`) gets only the data.
"""

from __future__ import annotations

import csv
import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, TextIO


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )


def deployments_table(deployed: dict[str, dict[str, Any]]) -> str:
    rows = []
    for key, entry in sorted(deployed.items()):
        replicas = entry.get("replicas") or []
        alias = entry.get("alias")
        version = str(entry.get("version"))
        if alias:
            version += f" (@{alias.get('name')})"
        batching = entry.get("batching")
        rows.append([
            key, entry.get("status"), entry.get("model_name"), version,
            f"{sum(1 for r in replicas if r.get('healthy'))}/{len(replicas)}",
            entry.get("restarts", 0),
            batching.get("max_batch_size") if isinstance(batching, dict) else None,
            ",".join(str(r.get("port")) for r in replicas if r.get("port") is not None) or None,
        ])  # fmt: skip
    headers = ["KEY", "STATUS", "MODEL", "VERSION", "READY", "RESTARTS", "BATCH", "PORTS"]
    return table(headers, rows)


def replica_summary(entry: dict[str, Any] | None) -> tuple[str, str]:
    """("1/2 ready: 1 running, 1 starting", a key that changes only when states do)."""
    if entry is None:
        return "not listed yet", "unlisted"
    replicas = entry.get("replicas") or []
    ready = sum(1 for r in replicas if r.get("healthy"))
    counts = Counter(str(r.get("status")) for r in replicas)
    states = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    text = f"{entry.get('status')}, {ready}/{len(replicas)} replicas ready ({states or 'none'})"
    return text, text


def split_failure(detail: str) -> tuple[str, list[str]]:
    """A deploy failure's sentence and the backend's last output lines, apart."""
    head, sep, tail = detail.partition("; last output:\n")
    if not sep:
        head, _, tail = detail.partition("\n")
    return head, [line for line in tail.splitlines() if line.strip()]


def predictions_of(answer: Any) -> list[Any]:
    """The row-by-row predictions of a scoring server's answer."""
    if isinstance(answer, dict) and "predictions" in answer:
        answer = answer["predictions"]
    if isinstance(answer, list):
        return answer
    if isinstance(answer, dict) and answer and all(isinstance(v, list) for v in answer.values()):
        columns = list(answer)
        lengths = {len(v) for v in answer.values()}
        if len(lengths) == 1:  # named outputs: one list each, turned into rows
            rows = zip(*answer.values(), strict=True)
            return [dict(zip(columns, values, strict=True)) for values in rows]
    raise ValueError("the model's answer is not a list of predictions")


class PredictionWriter:
    """Predictions to stdout as CSV (columns fixed by the first one) or JSON lines."""

    def __init__(self, out: TextIO, fmt: str) -> None:
        self._out = out
        self._fmt = fmt
        self._csv = csv.writer(out, lineterminator="\n")
        self._columns: list[str] | None = None

    def write(self, predictions: list[Any]) -> None:
        if self._fmt == "jsonl":
            self._out.writelines(json.dumps(p) + "\n" for p in predictions)
        else:
            for p in predictions:
                self._csv.writerow(self._csv_row(p))
        self._out.flush()

    def _csv_row(self, prediction: Any) -> list[Any]:
        if self._columns is None:
            if isinstance(prediction, dict):
                self._columns = [str(k) for k in prediction]
            elif isinstance(prediction, list):
                self._columns = [f"prediction_{i}" for i in range(len(prediction))]
            else:
                self._columns = ["prediction"]
            self._csv.writerow(self._columns)
        if isinstance(prediction, dict):
            return [_cell(prediction.get(c)) for c in self._columns]
        if isinstance(prediction, list):
            return [_cell(v) for v in prediction]
        return [_cell(prediction)]


def _cell(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, dict | list) else value


class StatusLine:
    """A progress line on stderr: redrawn in place on a terminal; elsewhere (a CI log,
    a file) printed only when what it says changes, or every `every` seconds."""

    def __init__(
        self,
        stream: TextIO,
        tty: bool,
        every: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream
        self._tty = tty
        self._every = every
        self._clock = clock
        self._last_key: str | None = None
        self._last_print = clock()  # a short run prints no progress, only its result
        self._drawn = False

    def update(self, text: str, key: str | None = None) -> None:
        if self._tty:
            self._stream.write("\r\x1b[2K" + text)
            self._stream.flush()
            self._drawn = True
            return
        now = self._clock()
        changed = key is not None and key != self._last_key
        if changed or (key is None and now - self._last_print >= self._every):
            self._stream.write(text + "\n")
            self._stream.flush()
            self._last_key, self._last_print = key, now

    def clear(self) -> None:
        if self._tty and self._drawn:
            self._stream.write("\r\x1b[2K")
            self._stream.flush()
            self._drawn = False
