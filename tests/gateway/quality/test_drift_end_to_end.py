"""Drift through a live gateway: a model's own training rows plus the same rows with bmi + 1.

The reference is the run's `data/dataset.csv`, captured at deploy. The calls
carry floats exactly (Python's repr, as `json.dumps` writes them). Only `bmi`
moved, so only `bmi` may be flagged, in every window; the export gives back
every value exactly as it was sent.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator

import pandas as pd
import pytest
from sklearn.datasets import load_diabetes

from gateway.deploy.demo import RegisteredModel
from gateway.quality.drift import WINDOWS
from tests.support import Gateway, wait_until

CHUNK = 50


@pytest.fixture(scope="module")
def deployed(gateway: Gateway, diabetes_model: RegisteredModel) -> Iterator[str]:
    key = f"{diabetes_model.name}-{diabetes_model.version}"
    reply = gateway.post(f"/deploy/{diabetes_model.name}/{diabetes_model.version}")
    assert reply.status == 201, (reply.body, gateway.log())
    try:
        yield key
    finally:
        # The shared gateway has few backend ports: give this one back.
        gateway.post(f"/undeploy/{key}")


def _rows(frame: pd.DataFrame) -> list[tuple[float, ...]]:
    return sorted(tuple(float(v) for v in row) for row in frame.to_numpy().tolist())


def test_only_the_shifted_feature_drifts_and_the_export_is_exact(
    gateway: Gateway, deployed: str
) -> None:
    features = load_diabetes(as_frame=True).data
    sent = pd.concat([features, features.assign(bmi=features["bmi"] + 1)], ignore_index=True)
    columns = list(sent.columns)
    for start in range(0, len(sent), CHUNK):
        body = {"dataframe_split": {"columns": columns,
                                    "data": sent.iloc[start : start + CHUNK].to_numpy().tolist()}}  # fmt: skip
        reply = gateway.post(f"/{deployed}", body=json.dumps(body).encode(),
                             headers={"Content-Type": "application/json"})  # fmt: skip
        assert reply.status == 200, reply.body

    def logged() -> list[dict[str, object]]:
        lines = gateway.get(f"/model/{deployed}/dataset?format=jsonl").body.splitlines()
        return [json.loads(line) for line in lines]

    exported = wait_until(lambda: len(logged()) >= len(sent) and logged(), 30, what="every row")
    assert _rows(pd.DataFrame(exported)[columns]) == _rows(sent)
    reply = gateway.get(f"/model/{deployed}/dataset")
    from_csv = [[float(row[c]) for c in columns] for row in csv.DictReader(io.StringIO(reply.body.decode()))]  # fmt: skip
    assert _rows(pd.DataFrame(from_csv, columns=columns)) == _rows(sent)

    summary = gateway.get(f"/model/{deployed}/degradation_report?format=json").json()
    assert summary["data"]["reference_rows"] == len(features)
    assert summary["data"]["logged_rows"] == len(sent)
    assert summary["drifted_features"] == {window: ["bmi"] for window in WINDOWS}
