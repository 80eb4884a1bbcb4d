"""Our drift decisions against Evidently's own, on the same data.

Evidently (a test-only dependency: `pip install modelgw[evidently]`) runs its
DataDriftTable with its default tests; we run `feature_drift` on each feature.
For every case where both choose a method the same way, the methods, the
thresholds and the decisions must agree, and the scores must be equal where
the statistic is the same (KS, Wasserstein, Jensen-Shannon, and the
two-category chi-squared, which equals Evidently's two-proportion z-test).

Deliberate differences, each pinned by a test below:
- the sample size that switches tests to distances is the smaller sample's (a
  KS test on 900 current values is as powerful as it is on 900), Evidently
  looks at the reference alone;
- with more than two categories we test the two samples' counts against each
  other (a contingency table); Evidently tests the current counts against the
  reference's shares as if those were exact, which ignores the reference's own
  sampling noise and so raises false alarms more often than its 5 % says. The
  p-values differ; the decisions agree on clear cases;
- p-values are corrected across a window's features (Benjamini-Hochberg by
  default); Evidently does not correct.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np
import pandas as pd
import pytest

from gateway.quality.drift import DriftConfig, drift_table, feature_drift, window_drift

# Evidently's optional usage telemetry: off, and there is no network here anyway.
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("EVIDENTLY_DISABLE_TELEMETRY", "1")

with warnings.catch_warnings():
    # Evidently touches numpy.core at import (deprecated); our warnings are errors.
    warnings.simplefilter("ignore")
    evidently = pytest.importorskip(
        "evidently.legacy.report",
        reason="Evidently is not installed (make test installs it where it can: "
        "pip install 'modelgw[evidently]')",
    )
    from evidently.legacy.metrics import DataDriftTable
    from evidently.legacy.pipeline.column_mapping import ColumnMapping

# Evidently's names of its tests, by our method names.
METHODS = {
    "ks": {"K-S p_value"},
    "wasserstein": {"Wasserstein distance (normed)"},
    "chi2": {"chi-square p_value", "Z-test p_value"},
    "jensenshannon": {"Jensen-Shannon distance"},
}
NOW = 1_800_000_000.0


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _cases() -> dict[str, tuple[pd.Series, pd.Series, bool]]:
    """name -> (reference, current, categorical for Evidently)."""
    r = _rng(42)
    small, large = 600, 5000
    letters, weights = list("abcd"), [0.4, 0.3, 0.2, 0.1]
    return {
        "numeric-small-same": (r.normal(0, 1, small), r.normal(0, 1, 400), False),
        "numeric-small-moved": (r.normal(0, 1, small), r.normal(0.5, 1, 400), False),
        "numeric-large-nudged": (r.normal(0, 1, large), r.normal(0.03, 1, large), False),
        "numeric-large-moved": (r.normal(0, 1, large), r.normal(0.4, 1.2, large), False),
        "categories-small-same": (r.choice(letters, small, p=weights),
                                  r.choice(letters, 400, p=weights), True),
        "categories-small-moved": (r.choice(letters, small, p=weights),
                                   r.choice(letters, 400, p=weights[::-1]), True),
        "binary-small-same": (r.choice(["no", "yes"], small, p=[0.7, 0.3]),
                              r.choice(["no", "yes"], 400, p=[0.7, 0.3]), True),
        "binary-small-moved": (r.choice(["no", "yes"], small, p=[0.7, 0.3]),
                               r.choice(["no", "yes"], 400, p=[0.5, 0.5]), True),
        "categories-large-same": (r.choice(letters, large, p=weights),
                                  r.choice(letters, large, p=weights), True),
        "categories-large-moved": (r.choice(letters, large, p=weights),
                                   r.choice(letters, large, p=[0.2, 0.2, 0.3, 0.3]), True),
        "few-valued-number-small-moved": (r.integers(0, 4, small).astype(float),
                                    r.choice([0.0, 1, 2, 3], 400, p=[0.1, 0.2, 0.3, 0.4]), False),
        "few-valued-number-large-same": (r.integers(0, 4, large).astype(float),
                                    r.integers(0, 4, large).astype(float), False),
    }  # fmt: skip


def _evidently(frames: dict[str, tuple[pd.Series, pd.Series, bool]]) -> dict[str, Any]:
    reference = pd.DataFrame({name: pd.Series(ref) for name, (ref, _, _) in frames.items()})
    current = pd.DataFrame({name: pd.Series(cur) for name, (_, cur, _) in frames.items()})
    mapping = ColumnMapping(
        numerical_features=[n for n, (_, _, cat) in frames.items() if not cat],
        categorical_features=[n for n, (_, _, cat) in frames.items() if cat],
    )
    report = evidently.Report(metrics=[DataDriftTable()])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report.run(reference_data=reference, current_data=current, column_mapping=mapping)
        return report.as_dict()["metrics"][0]["result"]


@pytest.fixture(scope="module")
def decisions() -> list[dict[str, Any]]:
    """The decision table: one row per case, ours beside Evidently's."""
    table = []
    for name, (ref, cur, categorical) in _cases().items():
        # One case per run: reference and current have their own sizes per case.
        theirs = _evidently({name: (ref, cur, categorical)})["drift_by_columns"][name]
        ours = feature_drift(pd.Series(ref), pd.Series(cur), name, "all_time")
        table.append({
            "case": name, "method": ours.method, "evidently": theirs["stattest_name"],
            "threshold": ours.threshold, "evidently_threshold": theirs["stattest_threshold"],
            "score": ours.score, "evidently_score": float(theirs["drift_score"]),
            "drifted": ours.drifted, "evidently_drifted": bool(theirs["drift_detected"]),
        })  # fmt: skip
    return table


def test_methods_thresholds_and_decisions_agree(decisions: list[dict[str, Any]]) -> None:
    for row in decisions:
        assert row["evidently"] in METHODS[row["method"]], row
        assert row["threshold"] == row["evidently_threshold"], row
        assert row["drifted"] == row["evidently_drifted"], row
    # The table holds both verdicts of every method.
    assert {(r["method"], r["drifted"]) for r in decisions} == {
        (m, d) for m in METHODS for d in (True, False)}  # fmt: skip


def test_scores_are_evidentlys_where_the_statistic_is_the_same(
    decisions: list[dict[str, Any]],
) -> None:
    for row in decisions:
        if row["evidently"] == "chi-square p_value":
            continue  # a different chi-squared test with more than two categories: below
        assert row["score"] == pytest.approx(row["evidently_score"], rel=1e-6, abs=1e-12), row


def test_more_than_two_categories_differ_in_p_value_not_in_decision(
    decisions: list[dict[str, Any]],
) -> None:
    rows = [r for r in decisions if r["evidently"] == "chi-square p_value"]
    assert len(rows) >= 2
    for row in rows:
        assert row["drifted"] == row["evidently_drifted"]
        if not row["drifted"]:
            # The two-sample test allows for the reference's own sampling noise: its
            # p-value is the larger, so it flags less, never more.
            assert row["score"] >= row["evidently_score"]


def test_evidentlys_chi_squared_cries_wolf_more_often_than_ours() -> None:
    """Both samples drawn from one distribution, 200 times: how often is drift flagged?"""
    from evidently.legacy.calculations.stattests.chisquare_stattest import chi_stat_test

    r = _rng(1)
    letters, weights = list("abcd"), [0.4, 0.3, 0.2, 0.1]
    ours = theirs = 0
    runs = 200
    for _ in range(runs):
        ref = pd.Series(r.choice(letters, 600, p=weights))
        cur = pd.Series(r.choice(letters, 400, p=weights))
        ours += bool(feature_drift(ref, cur, "c", "all_time").drifted)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs += bool(chi_stat_test(ref, cur, "cat", 0.05).drifted)
    assert ours / runs < 0.09  # about the 5 % a 5 % test promises
    assert theirs / runs > 0.1 and theirs > 2 * ours


def test_dataset_drift_share_is_evidentlys_without_correction() -> None:
    cases = {k: v for k, v in _cases().items() if "small" in k and "few" not in k}
    # Equal sizes per side, so one table holds every column.
    r = _rng(5)
    cases["numeric-small-moved-2"] = (r.normal(0, 1, 600), r.normal(1, 1, 400), False)
    theirs = _evidently(cases)
    reference = pd.DataFrame({n: pd.Series(ref) for n, (ref, _, _) in cases.items()})
    current = pd.DataFrame({n: pd.Series(cur) for n, (_, cur, _) in cases.items()})
    current["_ts"] = NOW
    for share in (0.5, 0.4):
        config = DriftConfig(correction="none", drift_share=share)
        rows = drift_table(reference, current, NOW, config, ["all_time"])
        ours = window_drift("all_time", rows, config)
        assert ours.n_drifted == theirs["number_of_drifted_columns"]
        assert ours.share == pytest.approx(theirs["share_of_drifted_columns"])
        evidently_says = _evidently_share_decision(cases, share)
        assert ours.drifted == evidently_says
    # With Benjamini-Hochberg the clear verdicts stand.
    corrected = drift_table(reference, current, NOW, DriftConfig(), ["all_time"])
    assert sorted(r.feature for r in corrected if r.drifted) == sorted(
        n for n, v in theirs["drift_by_columns"].items() if v["drift_detected"]
    )


def _evidently_share_decision(cases: dict[str, tuple[pd.Series, pd.Series, bool]],
                              share: float) -> bool:  # fmt: skip
    reference = pd.DataFrame({n: pd.Series(ref) for n, (ref, _, _) in cases.items()})
    current = pd.DataFrame({n: pd.Series(cur) for n, (_, cur, _) in cases.items()})
    mapping = ColumnMapping(
        numerical_features=[n for n, (_, _, cat) in cases.items() if not cat],
        categorical_features=[n for n, (_, _, cat) in cases.items() if cat],
    )
    from evidently.legacy.metrics import DatasetDriftMetric

    report = evidently.Report(metrics=[DatasetDriftMetric(drift_share=share)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report.run(reference_data=reference, current_data=current, column_mapping=mapping)
        return bool(report.as_dict()["metrics"][0]["result"]["dataset_drift"])


def test_the_smaller_sample_decides_between_test_and_distance() -> None:
    """A deliberate difference: Evidently switches on the reference's size alone."""
    r = _rng(9)
    ref, cur = r.normal(0, 1, 5000), r.normal(0, 1, 900)
    theirs = _evidently({"x": (ref, cur, False)})["drift_by_columns"]["x"]
    ours = feature_drift(pd.Series(ref), pd.Series(cur), "x", "all_time")
    assert theirs["stattest_name"] == "Wasserstein distance (normed)"
    assert ours.method == "ks"
