"""Pure quality functions: metric names, metric values, drift statistics, the report."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from gateway.quality import drift
from gateway.quality.report import ReportInput, build_report
from gateway.quality.scores import canonical, compute_metrics, training_classes
from gateway.records.stores.base import Baseline, InferenceRecord, MetricsSnapshot


@pytest.mark.parametrize(
    ("name", "key"),
    [("accuracy", "accuracy"), ("training_accuracy_score", "accuracy"), ("val_f1_macro", "f1"),
     ("test_mean_squared_error", "mse"), ("RMSE", "rmse"), ("training_roc_auc", "roc_auc"),
     ("r2_score", "r2"), ("explained_variance", "explained_variance"), ("training_score", None)],
)  # fmt: skip
def test_metric_names(name: str, key: str | None) -> None:
    assert canonical(name)[0] == key


def test_values_equal_scikit_learn_and_skips_are_explained() -> None:
    truth, pred = [0, 1, 2, 2, 1, 0], [0, 2, 2, 2, 1, 1]
    values, skipped = compute_metrics(
        ["accuracy", "val_f1_macro", "recall", "roc_auc", "foo"], truth, pred
    )
    assert values["accuracy"] == pytest.approx(skm.accuracy_score(truth, pred))
    assert values["val_f1_macro"] == pytest.approx(skm.f1_score(truth, pred, average="macro"))
    assert values["recall"] == pytest.approx(skm.recall_score(truth, pred, average="weighted"))
    assert "probabilities" in skipped["roc_auc"] and "foo" in skipped


def test_regression_metrics() -> None:
    truth, pred = [1.0, 2.0, 3.0, 4.0], [1.1, 1.9, 3.2, 3.7]
    values, _ = compute_metrics(["rmse", "mae", "r2", "mape"], truth, pred)
    assert values["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(truth, pred)))
    assert values["r2"] == pytest.approx(skm.r2_score(truth, pred))


def test_drift_statistics() -> None:
    rng = np.random.default_rng(0)
    ref = pd.Series(rng.normal(0, 1, 500))
    same = drift.feature_drift(ref, ref.copy(), "x", "all_time")
    assert same.drifted is False and same.psi == pytest.approx(0, abs=1e-9)
    moved = drift.feature_drift(ref, ref + 2, "x", "all_time")
    assert moved.drifted and moved.psi >= 0.2 and moved.method == "ks" and moved.p_value < 0.05
    few = drift.feature_drift(ref, ref.head(3), "x", "all_time")
    assert few.drifted is None and "fewer than" in few.note
    cats = pd.Series(["a"] * 50 + ["b"] * 50)
    cat_moved = drift.feature_drift(cats, pd.Series(["a"] * 90 + ["b"] * 10), "c", "all_time")
    assert cat_moved.kind == "categorical" and cat_moved.drifted and cat_moved.method == "chi2"
    assert cat_moved.p_value is not None and cat_moved.p_value < 0.05


def test_windows_only_see_their_own_rows() -> None:
    now = 1_000_000_000.0
    ref = pd.DataFrame({"x": np.linspace(0, 1, 100)})
    old = pd.DataFrame({"x": np.linspace(5, 6, 100), "_ts": now - 200 * drift.DAY})
    new = pd.DataFrame({"x": np.linspace(0, 1, 100), "_ts": now - 1})
    results = {r.window: r for r in drift.drift_table(ref, pd.concat([old, new]), now)}
    assert results["last_week"].drifted is False and results["last_year"].drifted is True


def test_report_zip_contents() -> None:
    reference = pd.DataFrame({"x": np.arange(50.0), "kind": ["a", "b"] * 25, "target": 0})
    records = [
        InferenceRecord(str(i), "m", "1", 1000.0 + i, "application/json",
                        json.dumps({"dataframe_records": [{"x": float(i) + 100, "kind": "a"}]}),
                        '{"predictions": [1]}')
        for i in range(20)
    ]  # fmt: skip
    report = build_report(ReportInput(
        key="m-1", reference_csv=reference.to_csv(index=False).encode(), records=records,
        baseline=Baseline({"accuracy": 0.9, "rmse": 1.0}, "run", 0.0),
        snapshots=[MetricsSnapshot("s1.json", 1100.0, {"accuracy": 0.6, "rmse": 1.01})],
        now=1100.0,
    ))  # fmt: skip
    summary, archive = report.summary, report.archive
    assert archive is not None
    assert summary["drifted_features"]["all_time"] == ["x", "kind"]
    assert summary["degraded_metrics"] == ["accuracy"]  # rmse within 5%
    files = zipfile.ZipFile(io.BytesIO(archive))
    metrics_csv = pd.read_csv(io.BytesIO(files.read("metrics.csv")))
    assert metrics_csv.set_index("metric").loc["accuracy", "relative_change"] == pytest.approx(
        -1 / 3
    )
    assert "plots/metrics.png" in files.namelist()
    assert files.read("report.html").decode() == report.html


THREE = [0, 1, 2]


def test_one_right_answer_of_a_multi_class_model_is_perfect() -> None:
    values, skipped = compute_metrics(["accuracy", "f1_score", "precision", "recall"], [0], [0],
                                      classes=THREE)  # fmt: skip
    assert skipped == {}
    assert values == {"accuracy": 1.0, "f1_score": 1.0, "precision": 1.0, "recall": 1.0}


def test_two_classes_of_a_multi_class_model_average_as_multi_class() -> None:
    truth, pred = [0, 0, 2, 2, 2], [0, 2, 2, 2, 0]
    values, skipped = compute_metrics(["f1", "precision", "recall"], truth, pred, classes=THREE)
    assert skipped == {}
    assert values["f1"] == pytest.approx(skm.f1_score(truth, pred, average="weighted"))
    assert values["precision"] == pytest.approx(
        skm.precision_score(truth, pred, average="weighted")
    )


def test_classes_outside_the_known_ones_count_too() -> None:
    """Feedback may hold a class the training data lacked: the union decides."""
    truth, pred = [0, 1, 2], [0, 1, 1]
    values, _ = compute_metrics(["recall"], truth, pred, classes=[0, 1])
    assert values["recall"] == pytest.approx(skm.recall_score(truth, pred, average="weighted"))


@pytest.mark.parametrize(
    ("classes", "truth", "pred", "positive"),
    [
        ([0, 1], [1, 0, 1, 1], [1, 1, 0, 1], 1),
        (["no", "yes"], ["yes", "no", "yes", "yes"], ["yes", "yes", "no", "yes"], "yes"),
        ([1, 2], [2, 1, 2, 2], [2, 2, 1, 2], 2),
        ([-1, 1], [1, -1, 1, 1], [1, 1, -1, 1], 1),
    ],
)
def test_a_binary_model_is_scored_on_its_positive_class(
    classes: list, truth: list, pred: list, positive: object
) -> None:
    values, skipped = compute_metrics(["f1", "precision", "recall"], truth, pred, classes=classes)
    assert skipped == {}
    assert values["f1"] == pytest.approx(skm.f1_score(truth, pred, pos_label=positive))
    assert values["recall"] == pytest.approx(skm.recall_score(truth, pred, pos_label=positive))


def test_a_batch_of_one_class_of_a_binary_model() -> None:
    # Only negatives, all right: recall and f1 have no positive row to measure.
    values, skipped = compute_metrics(["accuracy", "precision", "recall", "f1"], [0, 0], [0, 0],
                                      classes=[0, 1])  # fmt: skip
    assert values == {"accuracy": 1.0}
    assert set(skipped) == {"precision", "recall", "f1"}
    assert all("positive class" in why for why in skipped.values())
    # Only positives, all right: a perfect score, not a failed look-up of label 1.
    values, skipped = compute_metrics(["precision", "recall", "f1"], ["yes"], ["yes"],
                                      classes=["no", "yes"])  # fmt: skip
    assert skipped == {} and values == {"precision": 1.0, "recall": 1.0, "f1": 1.0}


def test_training_classes_come_from_the_target_column() -> None:
    reference = pd.DataFrame({"x": [0.5, 1.5, 2.5, 3.5], "target": [2, 0, 1, 0]})
    assert training_classes(reference.to_csv(index=False).encode()) == [0, 1, 2]
    labelled = pd.DataFrame({"x": [1.0, 2.0], "Label": ["yes", "no"]})
    assert training_classes(labelled.to_csv(index=False).encode()) == ["no", "yes"]
    assert training_classes(b"x,y_hat\n1,2\n") is None
    assert training_classes(None) is None
