"""Drift without false alarms: logged values compared exactly, discrete features as categories.

The data is scikit-learn's diabetes set, whose features are scaled floats with
17 significant digits (`sex` takes two values): any precision lost between the
reference and the logged inputs shows up as drift of unchanged features.
"""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_diabetes

from gateway.quality import drift
from gateway.quality.report import ReportInput, build_report
from gateway.records.stores.base import InferenceRecord

NOW = 1_800_000_000.0


@pytest.fixture(scope="module")
def diabetes() -> pd.DataFrame:
    return load_diabetes(as_frame=True).frame


def _json_records(frame: pd.DataFrame, chunk: int = 50) -> list[InferenceRecord]:
    """Calls as a client sends them: `dataframe_split` with floats written exactly (repr)."""
    return [
        InferenceRecord(
            f"j{start}", "m", "1", NOW - 60 + start / 1000, "application/json",
            json.dumps({"dataframe_split": {
                "columns": list(frame.columns),
                "data": frame.iloc[start : start + chunk].to_numpy().tolist()}}),
            json.dumps({"predictions": [0.0] * len(frame.iloc[start : start + chunk])}),
        )
        for start in range(0, len(frame), chunk)
    ]  # fmt: skip


def _csv_records(frame: pd.DataFrame, chunk: int = 50) -> list[InferenceRecord]:
    return [
        InferenceRecord(
            f"c{start}", "m", "1", NOW - 60 + start / 1000, "text/csv",
            frame.iloc[start : start + chunk].to_csv(index=False),
            json.dumps({"predictions": [0.0] * len(frame.iloc[start : start + chunk])}),
        )
        for start in range(0, len(frame), chunk)
    ]  # fmt: skip


def _report(reference: pd.DataFrame, records: list[InferenceRecord]) -> tuple[dict, list[str]]:
    report = build_report(
        ReportInput(
            key="m-1", reference_csv=reference.to_csv(index=False).encode(), records=records,
            baseline=None, snapshots=[], now=NOW,
        )
    )  # fmt: skip
    assert report.summary["data"]["logged_rows"] > 0 and report.archive is not None
    return report.summary, zipfile.ZipFile(io.BytesIO(report.archive)).namelist()


def _drifted(reference: pd.DataFrame, records: list[InferenceRecord]) -> dict[str, list[str]]:
    return _report(reference, records)[0]["drifted_features"]


def test_reference_csv_is_read_exactly(diabetes: pd.DataFrame) -> None:
    """pandas' default CSV float parser is off by an ulp on most of these values."""
    from gateway.quality.report import reference_frame

    read = reference_frame(diabetes.to_csv(index=False).encode())
    assert read.to_numpy().tolist() == diabetes.to_numpy().tolist()


def test_the_same_rows_sent_as_json_do_not_drift(diabetes: pd.DataFrame) -> None:
    assert _drifted(diabetes, _json_records(diabetes.drop(columns="target"))) == {}


def test_the_same_rows_sent_as_csv_do_not_drift(diabetes: pd.DataFrame) -> None:
    """CSV bodies are logged as text; their numbers must parse as exactly as Python's."""
    assert _drifted(diabetes, _csv_records(diabetes.drop(columns="target"))) == {}


def test_only_the_shifted_feature_drifts(diabetes: pd.DataFrame) -> None:
    features = diabetes.drop(columns="target")
    shifted = features.assign(bmi=features["bmi"] + 1)
    summary, files = _report(diabetes, _json_records(pd.concat([features, shifted])))
    assert summary["drifted_features"] == {window: ["bmi"] for window in drift.WINDOWS}
    # A discrete feature is drawn as bars, a continuous one as histograms.
    assert {"plots/feature_sex.png", "plots/feature_bmi.png"} <= set(files)


def test_numbers_logged_as_text_equal_the_same_numbers(diabetes: pd.DataFrame) -> None:
    """`pd.to_numeric` is off by an ulp on text such as '0.038075906433423026'."""
    for feature in ("age", "bmi", "s4"):
        exact = diabetes[feature]
        as_text = exact.map(lambda v: repr(float(v)))
        result = drift.feature_drift(exact, as_text, feature, "all_time")
        assert result.method in ("ks", "chi2") and result.drifted is False, feature
        assert result.statistic == 0 and result.psi == pytest.approx(0), feature


def test_numbers_in_text_are_parsed_exactly(diabetes: pd.DataFrame) -> None:
    values = diabetes.to_numpy().ravel()
    as_text = pd.Series([repr(float(v)) for v in values])
    parsed = drift.numeric_values(as_text)
    assert parsed is not None and parsed.tolist() == values.tolist()
    assert drift.numeric_values(pd.Series(["1.5", "x"])) is None
    assert drift.numeric_values(pd.Series([True, False])) is None


def test_a_two_valued_feature_is_compared_as_categories(diabetes: pd.DataFrame) -> None:
    sex = diabetes["sex"]
    same = drift.feature_drift(sex, sex.sample(frac=1, random_state=0), "sex", "all_time")
    assert same.kind == "categorical" and "distinct values" in same.note
    assert same.drifted is False and same.method == "chi2"
    assert same.p_value == pytest.approx(1.0)
    tilted = pd.concat([sex[sex > 0], sex[sex > 0], sex[sex < 0]])
    moved = drift.feature_drift(sex, tilted, "sex", "all_time")
    assert moved.kind == "categorical" and moved.drifted


def test_categories_of_numbers_compare_by_value() -> None:
    """A reference column read as integers matches logged floats of the same value."""
    reference = pd.Series([0, 1] * 50)
    logged = pd.Series([0.0, 1.0] * 30)
    result = drift.feature_drift(reference, logged, "flag", "all_time")
    assert result.kind == "categorical" and result.drifted is False


def test_many_valued_numbers_stay_numeric(diabetes: pd.DataFrame) -> None:
    result = drift.feature_drift(diabetes["s4"], diabetes["s4"], "s4", "all_time")
    assert result.kind == "numeric" and result.method == "ks"
    assert result.statistic == 0 and result.drifted is False
    # A small reference of a continuous feature has few values, but none repeat:
    # it is still numeric, so every new value is not a new category.
    few = pd.Series(np.linspace(0, 1, 8))
    assert drift.feature_drift(few, few + 0.01, "x", "all_time").kind == "numeric"
