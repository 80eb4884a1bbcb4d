"""Drift decided as the field decides it: the method by type and size, corrected p-values,
distances on large samples, a dataset-level share, and every row saying what decided."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from gateway.quality import drift
from gateway.quality.drift import DriftConfig, drift_table, feature_drift, window_drift
from gateway.quality.monitor import drift_config
from gateway.settings import Settings

NOW = 1_800_000_000.0
# A fixed seed: each case is one draw, and a 5 % test flags one draw in twenty.
RNG = np.random.default_rng(1)


def _frame(columns: dict[str, np.ndarray | list]) -> pd.DataFrame:
    frame = pd.DataFrame(columns)
    frame["_ts"] = NOW - 60
    return frame


@pytest.mark.parametrize(
    ("reference", "current", "kind", "method", "threshold"),
    [
        (RNG.normal(0, 1, 800), RNG.normal(0, 1, 300), "numeric", "ks", 0.05),
        # The smaller sample decides: one of at most 1000 values is still tested.
        (RNG.normal(0, 1, 5000), RNG.normal(0, 1, 900), "numeric", "ks", 0.05),
        (RNG.normal(0, 1, 5000), RNG.normal(0, 1, 3000), "numeric", "wasserstein", 0.1),
        (RNG.choice(list("abc"), 500), RNG.choice(list("abc"), 400), "categorical", "chi2", 0.05),
        (RNG.choice(list("abc"), 5000), RNG.choice(list("abc"), 4000), "categorical", "jensenshannon", 0.1),
        # A number with a few repeating values is a category, small or large.
        (RNG.integers(0, 3, 600).astype(float), RNG.integers(0, 3, 600).astype(float), "categorical", "chi2", 0.05),
        (RNG.integers(0, 3, 6000).astype(float), RNG.integers(0, 3, 6000).astype(float), "categorical", "jensenshannon", 0.1),
    ],
    ids=["numeric-small", "numeric-one-small", "numeric-large", "categorical-small",
         "categorical-large", "discrete-small", "discrete-large"],
)  # fmt: skip
def test_the_method_follows_type_and_sample_size(
    reference: np.ndarray, current: np.ndarray, kind: str, method: str, threshold: float
) -> None:
    row = feature_drift(pd.Series(reference), pd.Series(current), "f", "all_time")
    assert (row.kind, row.method, row.threshold) == (kind, method, threshold)
    assert row.drifted is False  # the same distribution on both sides
    assert row.psi is not None  # PSI is always reported
    assert drift.METHOD_NAMES[method] in row.rule and str(threshold) in row.rule


def test_large_samples_are_judged_by_how_much_moved_not_by_a_p_value() -> None:
    """On 20,000 values a shift of 5 % of a standard deviation is 'significant' and harmless."""
    reference, current = RNG.normal(0, 1, 20_000), RNG.normal(0.05, 1, 20_000)
    assert stats.ks_2samp(reference, current).pvalue < 0.05  # a test would cry wolf
    row = feature_drift(pd.Series(reference), pd.Series(current), "f", "all_time")
    assert row.method == "wasserstein" and row.drifted is False and row.score < 0.1
    moved = feature_drift(pd.Series(reference), pd.Series(current + 0.3), "f", "all_time")
    assert moved.drifted is True and moved.score >= 0.1
    # The distance is in units of the reference's standard deviation: scale-free.
    scaled = feature_drift(pd.Series(reference * 1000), pd.Series((current + 0.3) * 1000), "f",
                           "all_time")  # fmt: skip
    assert scaled.score == pytest.approx(moved.score)


def test_many_unchanged_features_do_not_drift_by_chance() -> None:
    """Forty features drawn twice from one distribution: uncorrected tests flag some."""
    rng = np.random.default_rng(7)
    names = [f"x{i}" for i in range(40)]
    reference = pd.DataFrame({n: rng.normal(0, 1, 400) for n in names})
    current = _frame({n: rng.normal(0, 1, 400) for n in names})
    raw = drift_table(reference, current, NOW, DriftConfig(correction="none"), ["all_time"])
    assert sum(bool(r.drifted) for r in raw) >= 1, "this seed must show a false alarm"
    for correction in ("bh", "bonferroni"):
        config = DriftConfig(correction=correction)  # type: ignore[arg-type]
        rows = drift_table(reference, current, NOW, config, ["all_time"])
        assert not any(r.drifted for r in rows), correction
        assert window_drift("all_time", rows, config).drifted is False


def test_real_drift_survives_the_correction() -> None:
    rng = np.random.default_rng(3)
    names = [f"x{i}" for i in range(20)]
    reference = pd.DataFrame({n: rng.normal(0, 1, 300) for n in names})
    current = _frame({n: rng.normal(0.8 if n == "x5" else 0, 1, 300) for n in names})
    rows = drift_table(reference, current, NOW, DriftConfig(), ["all_time"])
    assert [r.feature for r in rows if r.drifted] == ["x5"]
    x5 = next(r for r in rows if r.feature == "x5")
    assert x5.p_adjusted is not None and x5.p_adjusted >= x5.p_value
    assert "Benjamini-Hochberg, 20 tests" in x5.rule


def test_corrections_adjust_as_their_definitions_say() -> None:
    p = [0.01, 0.04, 0.03, 0.5]
    assert drift.adjust(p, "none") == p
    assert drift.adjust(p, "bonferroni") == pytest.approx([0.04, 0.16, 0.12, 1.0])
    # Benjamini-Hochberg: p_(i) * m / i, made monotone from the largest down.
    assert drift.adjust(p, "bh") == pytest.approx([0.04, 0.16 / 3, 0.16 / 3, 0.5])


def test_dataset_drift_is_the_share_of_drifted_features() -> None:
    reference = pd.DataFrame({f"x{i}": np.linspace(0, 1, 200) for i in range(4)})
    shifted = {f"x{i}": np.linspace(0, 1, 200) + (5 if i < 2 else 0) for i in range(4)}
    rows = drift_table(reference, _frame(shifted), NOW, DriftConfig(), ["all_time"])
    half = window_drift("all_time", rows, DriftConfig())
    assert (half.n_tested, half.n_drifted, half.share, half.drifted) == (4, 2, 0.5, True)
    one = {f"x{i}": np.linspace(0, 1, 200) + (5 if i < 1 else 0) for i in range(4)}
    rows = drift_table(reference, _frame(one), NOW, DriftConfig(), ["all_time"])
    assert window_drift("all_time", rows, DriftConfig()).drifted is False
    assert window_drift("all_time", rows, DriftConfig(drift_share=0.25)).drifted is True


def test_thresholds_are_settings() -> None:
    settings = Settings(
        GATEWAY_DRIFT_P_VALUE="0.01", GATEWAY_DRIFT_WASSERSTEIN="0.5",
        GATEWAY_DRIFT_JENSENSHANNON="0.2", GATEWAY_DRIFT_LARGE_SAMPLE="100",
        GATEWAY_DRIFT_CORRECTION="bonferroni", GATEWAY_DRIFT_SHARE="0.3",
    )  # fmt: skip
    config = drift_config(settings, frozenset({"email"}))
    assert config == DriftConfig(p_value=0.01, wasserstein=0.5, jensenshannon=0.2,
                                 large_sample=100, correction="bonferroni", drift_share=0.3,
                                 exclude=frozenset({"email"}))  # fmt: skip
    reference, current = RNG.normal(0, 1, 500), RNG.normal(0.3, 1, 500)
    default = feature_drift(pd.Series(reference), pd.Series(current), "f", "w")
    strict = feature_drift(pd.Series(reference), pd.Series(current), "f", "w", config)
    assert (default.method, default.drifted) == ("ks", True)
    assert (strict.method, strict.threshold, strict.drifted) == ("wasserstein", 0.5, False)


def test_hashed_fields_are_not_compared() -> None:
    reference = pd.DataFrame({"email": ["a", "b"] * 50, "x": np.linspace(0, 1, 100)})
    current = _frame({"email": ["f00d"] * 100, "x": np.linspace(0, 1, 100)})
    rows = drift_table(reference, current, NOW, DriftConfig(exclude=frozenset({"email"})))
    assert {r.feature for r in rows} == {"x"}
