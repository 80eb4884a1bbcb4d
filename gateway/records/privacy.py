"""What of a call may be kept: a deterministic sample of calls, minus redacted input fields.

Sampling is decided by the request id alone (a hash, not a coin), so a call
that was kept is the one ground truth can later find, and a caller can tell
in advance which of its ids are kept (`sampled_in`).

Redaction names input fields (columns) and says per field what happens:
`drop` removes the field and its values; `hash` keeps the field with
HMAC-SHA256(installation key, value) in hex, so equal values still group
and join, but a short value (a postcode, a birth date) cannot be recovered
by hashing every candidate without the key. The key is made once per data
dir (`redaction.key`, mode 0600). Every MLflow scoring format is handled
(`dataframe_split`, `dataframe_records`, `instances`, `inputs`, CSV);
unnamed (positional) values are named as the export names them,
`feature_0`, `feature_1`, ... A body that cannot be read is not stored at
all: what cannot be parsed cannot be shown to be clean.
Pure functions; the log writer runs them in a worker thread.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import os
import re
import secrets
from pathlib import Path
from typing import Any, Literal

Action = Literal["drop", "hash"]
_RULE = re.compile(r"\s*([^:,]+?)\s*(?::\s*(drop|hash)\s*)?")
_SAMPLE_SPACE = 2**64


def sampled_in(request_id: str | None, fraction: float) -> bool:
    """Whether the call with this id is kept when `fraction` of calls are logged."""
    if fraction >= 1.0:
        return True
    if fraction <= 0.0 or request_id is None:
        return False
    digest = hashlib.blake2b(request_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < fraction * _SAMPLE_SPACE


def parse_rules(spec: str | None) -> dict[str, Action]:
    """`"email, ssn:hash, notes:drop"` -> {"email": "drop", "ssn": "hash", "notes": "drop"}."""
    rules: dict[str, Action] = {}
    if not spec or not spec.strip():
        return rules
    for part in spec.split(","):
        match = _RULE.fullmatch(part)
        if match is None or not match.group(1):
            raise ValueError(
                f"has an entry {part.strip()!r} that is not a field name with an optional"
                " :drop or :hash, as in 'email,ssn:hash'"
            )
        rules[match.group(1)] = "hash" if match.group(2) == "hash" else "drop"
    return rules


def installation_key(data_dir: Path) -> bytes:
    """The secret of the `hash` action: made on first use, then read (blocks: call in a thread)."""
    path = data_dir / "redaction.key"
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.hex())
    return key


class Redactor:
    """Applies the rules to one request body; returns the text to store, or None."""

    def __init__(self, rules: dict[str, Action], key: bytes) -> None:
        self.rules = rules
        self._key = key

    def hash(self, value: Any) -> str:
        # Text as sent, anything else as JSON: 7 sent as JSON and "7" in a CSV hash alike.
        text = value if isinstance(value, str) else json.dumps(value)
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()

    def apply(self, content_type: str, body: bytes) -> str | None:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return None
        if "csv" in content_type:
            return self._csv(text)
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            return None
        if not isinstance(data, dict):
            return None
        return json.dumps(self._payload(data))

    # ------------------------------------------------------------------ formats

    def _csv(self, text: str) -> str | None:
        try:
            rows = list(csv.reader(io.StringIO(text)))
        except csv.Error:
            return None
        if not rows:
            return text
        header, body = rows[0], rows[1:]
        keep = [i for i, name in enumerate(header) if self.rules.get(name) != "drop"]
        hashed = {i for i, name in enumerate(header) if self.rules.get(name) == "hash"}
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([header[i] for i in keep])
        for row in body:
            writer.writerow(
                [self.hash(row[i]) if i in hashed else row[i] for i in keep if i < len(row)]
            )
        return out.getvalue()

    def _payload(self, data: dict[str, Any]) -> dict[str, Any]:
        out = dict(data)
        if isinstance(data.get("dataframe_split"), dict):
            out["dataframe_split"] = self._split(data["dataframe_split"])
        if "dataframe_records" in data:
            out["dataframe_records"] = self._instances(data["dataframe_records"])
        for key in ("instances", "inputs"):
            if key in data:
                out[key] = self._instances(data[key])
        return out

    def _split(self, split: dict[str, Any]) -> dict[str, Any]:
        rows = split.get("data")
        columns = split.get("columns")
        if not isinstance(rows, list):
            return split
        names = (
            [str(c) for c in columns]
            if isinstance(columns, list)
            else [f"feature_{i}" for i in range(max((len(r) for r in rows if isinstance(r, list)),
                                                     default=0))]
        )  # fmt: skip
        keep = [i for i, name in enumerate(names) if self.rules.get(name) != "drop"]
        hashed = {i for i, name in enumerate(names) if self.rules.get(name) == "hash"}
        out = dict(split)
        if isinstance(columns, list):
            out["columns"] = [columns[i] for i in keep]
        out["data"] = [self._positional(r, keep, hashed) if isinstance(r, list) else r
                       for r in rows]  # fmt: skip
        return out

    def _positional(self, row: list[Any], keep: list[int], hashed: set[int]) -> list[Any]:
        return [self.hash(row[i]) if i in hashed else row[i] for i in keep if i < len(row)]

    def _instances(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self._instance(v) for v in value]
        if isinstance(value, dict):
            return self._named(value, columnar=True)
        return self.hash(value) if self.rules.get("input") == "hash" else (
            None if self.rules.get("input") == "drop" else value
        )  # fmt: skip

    def _instance(self, value: Any) -> Any:
        if isinstance(value, dict):
            return self._named(value, columnar=False)
        if isinstance(value, list):
            names = [f"feature_{i}" for i in range(len(value))]
            keep = [i for i, name in enumerate(names) if self.rules.get(name) != "drop"]
            hashed = {i for i, name in enumerate(names) if self.rules.get(name) == "hash"}
            return self._positional(value, keep, hashed)
        return value

    def _named(self, fields: dict[str, Any], *, columnar: bool) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in fields.items():
            action = self.rules.get(str(name))
            if action == "drop":
                continue
            if action == "hash":
                value = (
                    [self.hash(v) for v in value]
                    if columnar and isinstance(value, list)
                    else self.hash(value)
                )
            out[name] = value
        return out
