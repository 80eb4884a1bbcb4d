"""The data plane end to end: logging, dataset export, feedback metrics, reports, outages."""

from __future__ import annotations

import io
import json
import re
import sqlite3
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from sklearn import metrics as skm
from sklearn.datasets import load_wine

from gateway.deploy.demo import DEMO_ROW
from tests.conftest import RegistryInfo
from tests.support import Gateway, wait_until

V1, V2 = "wine-quality-1", "wine-quality-2"


@pytest.fixture(scope="module")
def gw(registry: RegistryInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway of its own, so the logged data is exactly what these tests send."""
    gateway = Gateway(
        tmp_path_factory.mktemp("data-plane") / "data",
        registry.tracking_uri,
        # A small in-memory bound makes an outage spill to the spool file.
        extra_env={"GATEWAY_LOG_MAX_PENDING": "5", "GATEWAY_LOG_FLUSH_INTERVAL": "0.05"},
    ).start()
    try:
        with ThreadPoolExecutor(2) as pool:
            replies = list(pool.map(lambda v: gateway.post(f"/deploy/wine-quality/{v}"), (1, 2)))
        assert [r.status for r in replies] == [201, 201], [r.body for r in replies]
        yield gateway
    finally:
        gateway.stop()


@pytest.fixture(scope="module")
def wine() -> pd.DataFrame:
    return load_wine(as_frame=True).data.rename(columns=lambda c: c.replace("/", "_"))


def _logged_rows(gw: Gateway, key: str) -> int:
    reply = gw.get(f"/model/{key}/dataset?format=jsonl")
    return len(reply.body.splitlines())


def _dataset(gw: Gateway, key: str, query: str = "") -> pd.DataFrame:
    reply = gw.get(f"/model/{key}/dataset{query}")
    assert reply.status == 200, reply.body
    return pd.read_csv(io.BytesIO(reply.body)) if reply.body else pd.DataFrame()


def test_every_input_format_is_logged_and_exported(gw: Gateway, wine: pd.DataFrame) -> None:
    local = mlflow.pyfunc.load_model("models:/wine-quality/1")
    batches = [wine.iloc[i * 5 : i * 5 + 5].reset_index(drop=True) for i in range(5)]
    bodies: list[tuple[str, bytes]] = [
        (
            "application/json",
            json.dumps(
                {"dataframe_split": json.loads(batches[0].to_json(orient="split"))}
            ).encode(),
        ),
        (
            "application/json",
            json.dumps({"dataframe_records": batches[1].to_dict(orient="records")}).encode(),
        ),
        (
            "application/json",
            json.dumps({"instances": batches[2].to_dict(orient="records")}).encode(),
        ),
        ("application/json", json.dumps({"inputs": batches[3].to_dict(orient="list")}).encode()),
        ("text/csv", batches[4].to_csv(index=False).encode()),
    ]
    for content_type, body in bodies:
        reply = gw.post(f"/{V1}", body=body, headers={"Content-Type": content_type})
        assert reply.status == 200, reply.body
    wait_until(lambda: _logged_rows(gw, V1) >= 25, 20, what="25 logged rows")

    reply = gw.get(f"/model/{V1}/dataset")
    assert reply.headers["content-type"].startswith("text/csv")
    assert reply.headers["content-disposition"] == f'attachment; filename="{V1}-dataset.csv"'
    exported = pd.read_csv(io.BytesIO(reply.body))
    assert len(exported) == 25
    expected = pd.concat(batches, ignore_index=True)
    features = list(wine.columns)
    assert list(exported.columns) == [*features, "prediction", "ground_truth", "request_id",
                                      "timestamp", "arm"]  # fmt: skip
    assert exported["ground_truth"].isna().all() and exported["request_id"].notna().all()
    np.testing.assert_allclose(exported[features].to_numpy(), expected.to_numpy())
    np.testing.assert_array_equal(exported["prediction"], local.predict(expected))
    assert pd.to_datetime(exported["timestamp"]).notna().all()

    lines = gw.get(f"/model/{V1}/dataset?format=jsonl").body.splitlines()
    assert len(lines) == 25 and json.loads(lines[0])["alcohol"] == expected["alcohol"][0]


def test_dataset_date_filters(gw: Gateway) -> None:
    assert len(_dataset(gw, V1, "?start_date=2000-01-01&end_date=2000-01-31")) == 0
    assert len(_dataset(gw, V1, "?start_date=2000-01-01")) == _logged_rows(gw, V1)


@pytest.mark.parametrize("path", ["dataset", "metrics/live"])
def test_the_last_date_there_is_ends_nothing(gw: Gateway, path: str) -> None:
    """9999-12-31 is a valid end date: its day after is not, and must not be a 500."""
    reply = gw.get(f"/model/{V1}/{path}?start_date=0001-01-01&end_date=9999-12-31")
    assert reply.status == 200, reply.body


@pytest.mark.parametrize(
    "query",
    [
        "?start_date=yesterday",
        "?end_date=2024-13-01",
        "?start_date=2024-02-02&end_date=2024-02-01",
        "?format=xml",
        "?start_date=2024-01-01&start_date=2024-01-02",
    ],
)
def test_dataset_bad_queries_are_400(gw: Gateway, query: str) -> None:
    reply = gw.get(f"/model/{V1}/dataset{query}")
    assert reply.status == 400, reply.body
    assert reply.json()["error"] == "bad_request"


def test_baseline_comes_from_the_run(gw: Gateway, registry: RegistryInfo) -> None:
    reply = gw.get(f"/model/{V1}/metrics")
    assert reply.status == 200, reply.body
    client = MlflowClient(registry.tracking_uri)
    assert reply.json()["metrics"] == client.get_run(registry.v1.run_id).data.metrics


def _test_split(wine: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    target = load_wine(as_frame=True).target
    rows = wine.sample(40, random_state=3)
    return rows, target.loc[rows.index].to_numpy()


def test_set_new_metrics_equals_scikit_learn(gw: Gateway, wine: pd.DataFrame) -> None:
    rows, truth = _test_split(wine)
    # Flip some labels so the snapshot differs from a perfect score.
    truth = truth.copy()
    truth[:6] = (truth[:6] + 1) % 3
    reply = gw.post(
        f"/model/{V1}/set_new_metrics",
        json_body={
            "instances": rows.to_dict(orient="records"),
            "results": truth.tolist(),
            "timestamp": "2026-01-02T03:04:05Z",
        },
    )
    assert reply.status == 201, reply.body
    snapshot = reply.json()
    predicted = mlflow.pyfunc.load_model("models:/wine-quality/1").predict(rows)
    assert snapshot["metrics"]["accuracy"] == pytest.approx(skm.accuracy_score(truth, predicted))
    for name, fn in (
        ("f1_score", skm.f1_score),
        ("precision", skm.precision_score),
        ("recall", skm.recall_score),
    ):
        expected = fn(truth, predicted, average="weighted", zero_division=0)
        assert snapshot["metrics"][name] == pytest.approx(expected), name
    assert snapshot["n_samples"] == 40
    assert snapshot["timestamp"].startswith("2026-01-02T03:04:05")

    files = gw.get(f"/model/{V1}/new_metrics_file_name").json()["files"]
    assert snapshot["name"] in files
    stored = gw.get(f"/model/{V1}/new_metrics/{snapshot['name']}")
    assert stored.status == 200 and stored.json()["metrics"] == snapshot["metrics"]
    history = gw.get(f"/model/{V1}/metrics/history").json()
    assert [s["name"] for s in history["snapshots"]] == files
    assert history["baseline"] == gw.get(f"/model/{V1}/metrics").json()["metrics"]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "needle"),
    [
        (b"{not json", "application/json", 400, "not valid JSON"),
        (b"[1, 2]", "application/json", 400, "JSON object"),
        (b"a,b\n1,2", "text/csv", 415, "application/json"),
        (json.dumps({"instances": [[1.0] * 13]}).encode(), "application/json", 400, "results"),
        (json.dumps({"results": [1]}).encode(), "application/json", 400, "inputs"),
        (
            json.dumps({"dataframe_records": [{"alcohol": 1}], "results": [1, 2]}).encode(),
            "application/json",
            400,
            "rejected",
        ),
    ],
)
def test_set_new_metrics_mistakes(
    gw: Gateway, body: bytes, content_type: str, status: int, needle: str
) -> None:
    reply = gw.post(
        f"/model/{V1}/set_new_metrics", body=body, headers={"Content-Type": content_type}
    )
    assert reply.status == status, reply.body
    assert needle in reply.json()["detail"]


def test_length_mismatch_is_400(gw: Gateway, wine: pd.DataFrame) -> None:
    rows, truth = _test_split(wine)
    reply = gw.post(
        f"/model/{V1}/set_new_metrics",
        json_body={
            "dataframe_records": rows.to_dict(orient="records"),
            "results": truth[:-1].tolist(),
        },
    )
    assert reply.status == 400
    assert "one ground-truth value per input row" in reply.json()["detail"]


@pytest.mark.parametrize(
    ("name", "status"),
    [("..%2F..%2Fstate.db", 400), ("metrics-20990101T000000000000Z.json", 404), ("x.json", 400)],
)
def test_new_metrics_names_are_validated(gw: Gateway, name: str, status: int) -> None:
    assert gw.get(f"/model/{V1}/new_metrics/{name}").status == status


def _report(gw: Gateway, key: str) -> tuple[dict[str, Any], zipfile.ZipFile]:
    summary = gw.get(f"/model/{key}/degradation_report?format=json")
    assert summary.status == 200, summary.body
    archive = gw.get(f"/model/{key}/degradation_report")
    assert archive.status == 200
    assert archive.headers["content-type"] == "application/zip"
    assert "degradation-report-" in archive.headers["content-disposition"]
    return summary.json(), zipfile.ZipFile(io.BytesIO(archive.body))


def test_report_flags_the_shifted_features_and_only_those(
    gw: Gateway, registry: RegistryInfo
) -> None:
    # Send v2 exactly its own training data, with two features moved far away.
    client = MlflowClient(registry.tracking_uri)
    path = client.download_artifacts(registry.v2.run_id, "data/dataset.csv", str(registry.root))
    reference = pd.read_csv(path).drop(columns=["target"])
    shifted = reference.copy()
    shifted["alcohol"] += 5.0
    shifted["proline"] *= 3.0
    for start in range(0, len(shifted), 25):
        chunk = shifted.iloc[start : start + 25]
        reply = gw.post(
            f"/{V2}", json_body={"dataframe_split": json.loads(chunk.to_json(orient="split"))}
        )
        assert reply.status == 200, reply.body
    wait_until(lambda: _logged_rows(gw, V2) >= len(shifted), 20, what="the shifted rows")

    summary, archive = _report(gw, V2)
    assert summary["status"] in ("drift", "drift_and_degradation")
    for window in ("last_week", "last_month", "last_year", "all_time"):
        assert sorted(summary["drifted_features"][window]) == ["alcohol", "proline"], window
    names = set(archive.namelist())
    assert {"report.html", "drift.json", "drift.csv", "metrics.csv", "summary.json"} <= names
    assert "plots/feature_alcohol.png" in names
    drift_rows = json.loads(archive.read("drift.json"))
    alcohol = next(r for r in drift_rows if r["feature"] == "alcohol" and r["window"] == "all_time")
    assert alcohol["method"] == "ks" and alcohol["p_adjusted"] < 0.05 and alcohol["psi"] >= 0.2
    assert "Kolmogorov-Smirnov" in alcohol["rule"] and alcohol["threshold"] == 0.05
    assert summary["dataset_drift"]["all_time"]["n_drifted"] == 2
    assert summary["dataset_drift"]["all_time"]["drifted"] is False  # 2 of 13 features
    page = archive.read("report.html").decode()
    assert page.index("Summary") < page.index("Drift by feature")
    assert "Kolmogorov-Smirnov test, p &lt; 0.05" in page and "Benjamini-Hochberg" in page

    # The same page, for a browser.
    served = gw.get(f"/model/{V2}/report")
    assert served.status == 200 and served.headers["content-type"] == "text/html; charset=utf-8"

    def body(html: str) -> str:  # minus the time it was generated
        return re.sub(r"<p>Generated [^<]*</p>", "", html)

    assert body(served.body.decode()) == body(page)


def test_report_with_feedback_shows_metric_decline(gw: Gateway, wine: pd.DataFrame) -> None:
    rows, truth = _test_split(wine)
    wrong = (truth + 1) % 3  # every answer is now wrong
    reply = gw.post(
        f"/model/{V1}/set_new_metrics",
        json_body={"instances": rows.to_dict(orient="records"), "results": wrong.tolist()},
    )
    assert reply.status == 201
    summary, archive = _report(gw, V1)
    assert "accuracy" in summary["degraded_metrics"]
    metrics_csv = pd.read_csv(io.BytesIO(archive.read("metrics.csv")))
    latest = metrics_csv[(metrics_csv["snapshot"] == summary["latest_snapshot"])]
    assert latest.set_index("metric").loc["accuracy", "degraded"]


@pytest.fixture(scope="module")
def unserved(registry: RegistryInfo) -> str:
    """A registered version that is never deployed: data endpoints need it in the registry
    (PUT reference of a version the registry does not know is a 404)."""
    from gateway.deploy.demo import train_and_register

    model = train_and_register(registry.tracking_uri, "unserved-model",
                               artifact_location=registry.root / "artifacts")  # fmt: skip
    return f"{model.name}-{model.version}"


def test_report_without_data_says_what_is_missing(
    gw: Gateway, wine: pd.DataFrame, unserved: str
) -> None:
    # A key known only by its reference data: the report builds and names what is missing.
    reply = gw.request(
        "PUT",
        f"/model/{unserved}/reference",
        body=wine.head(10).to_csv(index=False).encode(),
        headers={"Content-Type": "text/csv"},
    )
    assert reply.status == 200, reply.body
    summary = gw.get(f"/model/{unserved}/degradation_report?format=json").json()
    assert summary["status"] == "insufficient_data"
    assert not any("reference data" in m for m in summary["missing"])
    assert any("logged inputs" in m for m in summary["missing"])
    assert any("baseline metrics" in m for m in summary["missing"])


@pytest.mark.parametrize(
    ("key", "code"),
    [("never-model-1", "model_not_found"), ("wine-quality-99", "version_not_found")],
)
@pytest.mark.parametrize(
    "path",
    [
        "dataset",
        "dataset?format=jsonl",
        "metrics",
        "metrics/history",
        "new_metrics_file_name",
        "degradation_report",
        "degradation_report?format=json",
        "report",
        "metrics/live",
    ],
)
def test_data_of_a_key_that_never_existed_is_404(
    gw: Gateway, key: str, code: str, path: str
) -> None:
    reply = gw.get(f"/model/{key}/{path}")
    assert reply.status == 404, reply.body
    assert reply.headers["content-type"].startswith("application/json")
    body = reply.json()
    assert body["error"] == code and body["detail"]


def test_history_outlives_the_registry_entry(gw: Gateway) -> None:
    """Calls logged for a version that has since left the registry are still exported."""
    inputs = {"dataframe_records": [{"alcohol": 13.2, "ash": 2.14}]}
    with sqlite3.connect(Path(gw.data_dir) / "inference.db", timeout=30) as db:
        db.execute(
            "INSERT INTO inference_log"
            " (id, model, version, ts, content_type, inputs, predictions)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            ("retired-1", "retired-model", "3", 1_700_000_000.0, "application/json",
             json.dumps(inputs), '{"predictions": [1]}'),
        )  # fmt: skip
    db.close()
    exported = _dataset(gw, "retired-model-3")
    assert exported[["alcohol", "ash", "prediction"]].to_dict("records") == [
        {"alcohol": 13.2, "ash": 2.14, "prediction": 1}
    ]
    assert gw.get("/model/retired-model-3/metrics/history").status == 200
    summary = gw.get("/model/retired-model-3/degradation_report?format=json")
    assert summary.status == 200, summary.body
    assert any("reference data" in m for m in summary.json()["missing"])


def test_reference_upload(gw: Gateway, wine: pd.DataFrame, unserved: str) -> None:
    reply = gw.request(
        "PUT",
        f"/model/{unserved}/reference",
        body=wine.head(30).to_csv(index=False).encode(),
        headers={"Content-Type": "text/csv"},
    )
    assert reply.status == 200, reply.body
    assert reply.json()["rows"] == 30
    bad = gw.request(
        "PUT", f"/model/{unserved}/reference", body=b"", headers={"Content-Type": "text/csv"}
    )
    assert bad.status == 400
    # A version the registry does not know takes no data.
    unknown = gw.request(
        "PUT", "/model/nonexistent-9/reference", body=b"a\n1\n",
        headers={"Content-Type": "text/csv"},
    )  # fmt: skip
    assert unknown.status == 404


def test_a_locked_store_loses_nothing(gw: Gateway, wine: pd.DataFrame) -> None:
    before = _logged_rows(gw, V1)
    lock = sqlite3.connect(Path(gw.data_dir) / "inference.db", timeout=30)
    try:
        lock.execute("BEGIN EXCLUSIVE")
        for i in range(30):
            row = wine.iloc[[i]]
            reply = gw.post(
                f"/{V1}", json_body={"dataframe_split": json.loads(row.to_json(orient="split"))}
            )
            assert reply.status == 200, reply.body
        wait_until(
            lambda: not gw.get("/health").json()["inference_log"]["store_up"],
            10,
            what="the writer to notice the outage",
        )
        stats = gw.get("/health").json()["inference_log"]
        assert stats["retried"] > 0
        wait_until(
            lambda: gw.get("/health").json()["inference_log"]["spooled"] > 0,
            10,
            what="records to spill to the spool file",
        )
    finally:
        lock.rollback()
        lock.close()
    wait_until(lambda: _logged_rows(gw, V1) == before + 30, 30, what="every record to arrive")
    stats = gw.get("/health").json()["inference_log"]
    assert stats["store_up"] and stats["lost"] == 0 and stats["replayed"] > 0


def _correctly_predicted(
    local_model: Any, wine: pd.DataFrame, classes: dict[int, int]
) -> tuple[pd.DataFrame, list[int]]:
    """Rows of the wine set the demo model gets right, `classes[c]` rows of class `c`."""
    target = load_wine(as_frame=True).target
    predicted = pd.Series(local_model.predict(wine), index=wine.index)
    picked: list[int] = []
    for label, count in classes.items():
        right = wine.index[(target == label) & (predicted == label)]
        picked.extend(right[:count])
    return wine.loc[picked], [int(target[i]) for i in picked]


def test_one_right_answer_scores_perfectly(
    gateway: Gateway, local_model: Any, wine: pd.DataFrame
) -> None:
    """The README's example: one correctly predicted row of the 3-class demo model."""
    row = pd.DataFrame([DEMO_ROW])
    [label] = local_model.predict(row)
    reply = gateway.post(
        f"/model/{V1}/set_new_metrics",
        json_body={
            "dataframe_split": json.loads(row.to_json(orient="split", index=False)),
            "results": [int(label)],
        },
    )
    assert reply.status == 201, reply.body
    snapshot = reply.json()
    assert snapshot["skipped"] == {}
    assert snapshot["metrics"] == {"accuracy": 1.0, "f1_score": 1.0, "precision": 1.0,
                                   "recall": 1.0}  # fmt: skip
    summary = gateway.get(f"/model/{V1}/degradation_report?format=json").json()
    assert summary["latest_snapshot"] == snapshot["name"]
    assert summary["degraded_metrics"] == []


def test_two_classes_of_a_three_class_model_are_scored_as_multi_class(
    gateway: Gateway, local_model: Any, wine: pd.DataFrame
) -> None:
    rows, truth = _correctly_predicted(local_model, wine, {0: 3, 2: 2})
    truth[0] = 2  # one wrong answer, so the averages are not all 1.0
    reply = gateway.post(
        f"/model/{V1}/set_new_metrics",
        json_body={"dataframe_records": rows.to_dict(orient="records"), "results": truth},
    )
    assert reply.status == 201, reply.body
    snapshot = reply.json()
    assert snapshot["skipped"] == {}
    predicted = local_model.predict(rows)
    assert sorted(set(truth) | set(predicted)) == [0, 2]
    for name, fn in (
        ("f1_score", skm.f1_score),
        ("precision", skm.precision_score),
        ("recall", skm.recall_score),
    ):
        expected = fn(truth, predicted, average="weighted", zero_division=0)
        assert snapshot["metrics"][name] == pytest.approx(expected), name


# ------------------------------------------------------------ ground truth by id


def _late_calls(gw: Gateway, wine: pd.DataFrame, prefix: str) -> dict[str, list[int]]:
    """Eight calls of five rows, each with its own request id; predictions by id."""
    rows = wine.sample(40, random_state=11)
    answers = {}
    for i in range(8):
        chunk = rows.iloc[i * 5 : i * 5 + 5]
        rid = f"{prefix}-{i}"
        reply = gw.post(f"/{V1}", json_body={"dataframe_records": chunk.to_dict(orient="records")},
                        headers={"X-Request-ID": rid})  # fmt: skip
        assert reply.status == 200 and reply.headers["x-request-id"] == rid
        answers[rid] = reply.json()["predictions"]
    return answers


def _age(gw: Gateway, prefix: str, seconds: float) -> None:
    """Move the calls of `prefix` into the past, as if they had been made then."""
    with sqlite3.connect(Path(gw.data_dir) / "inference.db", timeout=30) as db:
        db.execute("UPDATE inference_log SET ts = ts - ? WHERE request_id LIKE ?",
                   (seconds, f"{prefix}-%"))  # fmt: skip
    db.close()


def test_feedback_days_later_gives_scikit_learns_metrics(gw: Gateway, wine: pd.DataFrame) -> None:
    answers = _late_calls(gw, wine, "late")
    wait_until(lambda: len(gw.get(f"/model/{V1}/dataset?format=jsonl").body.splitlines())
               >= _logged_rows(gw, V1) and all(
                   rid in gw.get(f"/model/{V1}/dataset").body.decode() for rid in answers),
               20, what="the calls to be logged")  # fmt: skip
    _age(gw, "late", 3 * 86_400)
    # The truth arrives three days later: mostly the predictions, a few of them wrong.
    truth = {rid: [(p + 1) % 3 if i == 0 else p for i, p in enumerate(preds)]
             for rid, preds in answers.items()}  # fmt: skip
    ids = list(truth)
    as_json = [{"request_id": rid, "result": truth[rid]} for rid in ids[:4]]
    reply = gw.post(f"/model/{V1}/feedback", json_body=as_json)
    assert reply.status == 200, reply.body
    assert (reply.json()["matched"], reply.json()["labelled_rows"]) == (4, 20)
    as_csv = "request_id,result\n" + "".join(f"{rid},{v}\n" for rid in ids[4:] for v in truth[rid])
    reply = gw.post(f"/model/{V1}/feedback", body=as_csv.encode(),
                    headers={"Content-Type": "text/csv"})  # fmt: skip
    assert reply.status == 200, reply.body
    assert reply.json()["matched"] == 4

    day = datetime.fromtimestamp(time.time() - 3 * 86_400, UTC).date()
    period = f"start_date={day - timedelta(days=1)}&end_date={day + timedelta(days=1)}"
    live = gw.get(f"/model/{V1}/metrics/live?{period}")
    assert live.status == 200, live.body
    body = live.json()
    y_true = [v for rid in ids for v in truth[rid]]
    y_pred = [v for rid in ids for v in answers[rid]]
    assert body["n_calls"] == 8 and body["n_samples"] == 40 and body["skipped"] == {}
    assert body["metrics"]["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    for name, fn in (("f1_score", skm.f1_score), ("precision", skm.precision_score),
                     ("recall", skm.recall_score)):  # fmt: skip
        expected = fn(y_true, y_pred, average="weighted", zero_division=0)
        assert body["metrics"][name] == pytest.approx(expected), name
    assert set(body["baseline"]) == set(body["metrics"])

    # Today holds none of them; the export shows the truth beside each prediction.
    today = gw.get(f"/model/{V1}/metrics/live?start_date={date.today() + timedelta(days=1)}").json()
    assert today["n_samples"] == 0 and today["metrics"] == {}
    exported = _dataset(gw, V1)
    labelled = exported[exported["request_id"].isin(ids)]
    assert labelled.sort_values(["request_id", "timestamp"])["ground_truth"].notna().all()
    assert sorted(labelled["ground_truth"].astype(int)) == sorted(y_true)


def test_feedback_reports_unknown_duplicate_and_already_labelled_ids(
    gw: Gateway, wine: pd.DataFrame
) -> None:
    answers = _late_calls(gw, wine, "dup")
    wait_until(lambda: all(rid in gw.get(f"/model/{V1}/dataset").body.decode() for rid in answers),
               20, what="the calls to be logged")  # fmt: skip
    first, second = list(answers)[:2]
    items = [{"request_id": first, "result": answers[first]},
             {"request_id": first, "result": answers[first]},
             {"request_id": "never-sent", "result": 1},
             {"request_id": second, "result": [1]}]  # fmt: skip
    answer = gw.post(f"/model/{V1}/feedback", json_body=items).json()
    assert {k: answer[k] for k in ("received", "matched", "unknown", "duplicate", "rejected",
                                   "already_labelled")} == {
        "received": 4, "matched": 1, "unknown": 1, "duplicate": 1, "rejected": 1,
        "already_labelled": 0}  # fmt: skip
    assert answer["unknown_ids"] == ["never-sent"] and answer["duplicate_ids"] == [first]
    assert answer["rejected_ids"][0]["request_id"] == second
    again = gw.post(f"/model/{V1}/feedback", json_body=items[:1]).json()
    assert again["matched"] == 0 and again["already_labelled_ids"] == [first]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "error"),
    [
        (b"[1]", "application/json", 400, "bad_request"),
        (b"not json", "application/json", 400, "bad_request"),
        (b"a,b\n1,2\n", "text/csv", 400, "bad_request"),
        (b"request_id,result", "text/plain", 415, "unsupported_media_type"),
    ],
)
def test_feedback_mistakes_are_4xx(
    gw: Gateway, body: bytes, content_type: str, status: int, error: str
) -> None:
    reply = gw.post(f"/model/{V1}/feedback", body=body, headers={"Content-Type": content_type})
    assert reply.status == status, reply.body
    assert reply.json()["error"] == error


def test_feedback_for_a_key_that_never_existed_is_404(gw: Gateway) -> None:
    reply = gw.post("/model/never-model-1/feedback", json_body=[{"request_id": "a", "result": 1}])
    assert reply.status == 404 and reply.json()["error"] == "model_not_found"
