"""Input drift per feature and time window, decided as the monitoring tools decide it.

The method follows the feature's type and the sample size, as Evidently's
defaults do:

- numeric, either sample of at most `large_sample` values: two-sample
  Kolmogorov-Smirnov, drift when p < `p_value`;
- numeric, both samples larger: Wasserstein distance divided by the reference's
  standard deviation, drift when >= `wasserstein`;
- categorical (and numeric with a few repeating values), small: chi-squared test
  of the two samples' category counts, drift when p < `p_value`;
- categorical, large: Jensen-Shannon distance of the category shares (natural
  log, as SciPy and Evidently), drift when >= `jensenshannon`.

On large samples a test finds any difference, however small, "significant":
distances measure how much moved instead. The p-values of one window are
corrected for testing many features at once (Benjamini-Hochberg by default,
Bonferroni, or none), and the window's dataset drift is the share of drifted
features reaching `drift_share`. PSI is reported for every feature; it decides
nothing. Each row names the method, the threshold and the rule that decided.

Values are compared exactly: text is parsed with Python's correctly rounded
`float()`, because one value read two ways (an ulp apart) looks like two
distributions. A numeric feature with a few repeating values (a flag, a scaled
category) is compared as categories: the KS test assumes a continuous variable.
Pure functions over pandas objects; callers run them in a worker thread.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import stats
from scipy.spatial import distance

Correction = Literal["bh", "bonferroni", "none"]
MIN_SAMPLES = 5
PSI_BINS = 10
DAY = 86_400.0
WINDOWS: dict[str, float | None] = {
    "last_week": 7 * DAY,
    "last_month": 30 * DAY,
    "last_year": 365 * DAY,
    "all_time": None,
}
NON_FEATURES = {"timestamp", "_ts", "prediction", "target", "label", "y", "ground_truth",
                "request_id", "arm"}  # fmt: skip
# A numeric feature is discrete when its reference takes at most this many values,
# each seen MIN_PER_LEVEL times on average (a few repeating values, not a small
# sample of a continuous variable).
DISCRETE_MAX_LEVELS = 10
MIN_PER_LEVEL = 5
# Evidently's floor for the reference's standard deviation: a constant reference
# still gives a finite (large) normalised distance.
MIN_STD = 0.001
_EPS = 1e-6

METHOD_NAMES = {
    "ks": "Kolmogorov-Smirnov",
    "chi2": "chi-squared",
    "wasserstein": "normalised Wasserstein distance",
    "jensenshannon": "Jensen-Shannon distance",
}
TESTS = {"ks", "chi2"}  # methods that give p-values (and are corrected)
CORRECTION_NAMES = {"bh": "Benjamini-Hochberg", "bonferroni": "Bonferroni", "none": "none"}


@dataclass(frozen=True)
class DriftConfig:
    """Thresholds and choices of the drift decision (the GATEWAY_DRIFT_* settings)."""

    p_value: float = 0.05
    wasserstein: float = 0.1
    jensenshannon: float = 0.1
    large_sample: int = 1000
    correction: Correction = "bh"
    drift_share: float = 0.5
    min_samples: int = MIN_SAMPLES
    # Fields whose logged values cannot be compared with the reference (hashed ones).
    exclude: frozenset[str] = field(default_factory=frozenset)

    def threshold(self, method: str) -> float:
        return {"ks": self.p_value, "chi2": self.p_value, "wasserstein": self.wasserstein,
                "jensenshannon": self.jensenshannon}[method]  # fmt: skip

    def describe(self) -> dict[str, Any]:
        return {
            "ks_p_value": self.p_value,
            "chi2_p_value": self.p_value,
            "wasserstein": self.wasserstein,
            "jensenshannon": self.jensenshannon,
            "large_sample": self.large_sample,
            "correction": self.correction,
            "drift_share": self.drift_share,
            "min_samples": self.min_samples,
        }


@dataclass
class FeatureDrift:
    """One feature in one window: the method, what it measured, and the decision."""

    feature: str
    window: str
    kind: str  # "numeric" | "categorical"
    n_reference: int
    n_current: int
    method: str | None = None  # "ks" | "wasserstein" | "chi2" | "jensenshannon"
    statistic: float | None = None  # KS D, chi-squared, or the distance
    p_value: float | None = None  # tests only, before correction
    p_adjusted: float | None = None  # tests only, after correction across the window
    score: float | None = None  # what met the threshold: adjusted p, or the distance
    threshold: float | None = None
    psi: float | None = None
    drifted: bool | None = None
    rule: str = ""
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v)
                for k, v in asdict(self).items()}  # fmt: skip


@dataclass
class WindowDrift:
    """The dataset-level decision of one window."""

    window: str
    n_features: int
    n_tested: int
    n_drifted: int
    share: float | None
    drifted: bool | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def psi(reference: np.ndarray, current: np.ndarray, bins: int = PSI_BINS) -> float:
    """Population stability index over the reference's quantile bins."""
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)))
    if len(edges) < 2:
        edges = np.array([reference.min() - 0.5, reference.max() + 0.5])
    edges[0], edges[-1] = -np.inf, np.inf
    ref_share = np.histogram(reference, edges)[0] / len(reference)
    cur_share = np.histogram(current, edges)[0] / len(current)
    ref_share = np.clip(ref_share, _EPS, None)
    cur_share = np.clip(cur_share, _EPS, None)
    return float(np.sum((cur_share - ref_share) * np.log(cur_share / ref_share)))


def categorical_psi(ref_counts: pd.Series, cur_counts: pd.Series) -> float:
    ref_share = np.clip(ref_counts / ref_counts.sum(), _EPS, None)
    cur_share = np.clip(cur_counts / max(cur_counts.sum(), 1), _EPS, None)
    return float(np.sum((cur_share - ref_share) * np.log(cur_share / ref_share)))


def numeric_values(series: pd.Series) -> np.ndarray | None:
    """The values as floats, or None when the column is not numbers.

    Text goes through Python's `float()`, which rounds correctly; the parser of
    `pd.to_numeric` can land an ulp away from the value the client sent.
    """
    if pd.api.types.is_bool_dtype(series):
        return None
    if pd.api.types.is_numeric_dtype(series):
        return series.to_numpy(dtype=float)
    if any(isinstance(v, bool) for v in series):
        return None
    try:
        return series.to_numpy().astype(float)
    except (ValueError, TypeError):
        return None


def is_discrete(values: np.ndarray) -> bool:
    """A few values, each repeated: compare as categories, not as a continuous variable."""
    levels = len(np.unique(values))
    return levels <= DISCRETE_MAX_LEVELS and len(values) >= MIN_PER_LEVEL * levels


def numbers_of(reference: pd.Series, current: pd.Series) -> tuple[np.ndarray, np.ndarray] | None:
    """Both columns as exact finite floats, or None unless both are numbers."""
    ref, cur = numeric_values(reference), numeric_values(current)
    if ref is None or cur is None:
        return None
    return ref[np.isfinite(ref)], cur[np.isfinite(cur)]


def feature_drift(
    reference: pd.Series,
    current: pd.Series,
    feature: str,
    window: str,
    config: DriftConfig | None = None,
) -> FeatureDrift:
    """One feature's drift, decided as if it were the only feature tested."""
    config = config or DriftConfig()
    reference, current = reference.dropna(), current.dropna()
    numbers = numbers_of(reference, current)
    discrete = numbers is not None and is_discrete(numbers[0])
    kind = "numeric" if numbers is not None and not discrete else "categorical"
    n_ref, n_cur = (len(numbers[0]), len(numbers[1])) if numbers else (len(reference),
                                                                         len(current))  # fmt: skip
    result = FeatureDrift(feature, window, kind, n_ref, n_cur)
    if numbers is not None and discrete:
        levels = len(np.unique(numbers[0]))
        result.note = f"numeric with {levels} distinct values: compared as categories"
    if n_cur < config.min_samples or n_ref < config.min_samples:
        return _noted(result, f"fewer than {config.min_samples} samples: not tested")
    large = min(n_ref, n_cur) > config.large_sample
    if numbers is None:
        result = _categorical(result, reference.astype(str), current.astype(str), large)
    elif discrete:
        # Counted by value, so 1 read from a CSV and 1.0 logged as JSON are one category.
        result = _categorical(result, pd.Series(numbers[0]), pd.Series(numbers[1]), large)
    else:
        result = _numeric(result, *numbers, large)
    return decide(result, config, n_tests=1)


def _noted(result: FeatureDrift, note: str) -> FeatureDrift:
    result.note = f"{result.note}; {note}" if result.note else note
    return result


def _numeric(
    result: FeatureDrift, reference: np.ndarray, current: np.ndarray, large: bool
) -> FeatureDrift:
    result.psi = psi(reference, current)
    if large:
        norm = max(float(np.std(reference)), MIN_STD)
        result.method = "wasserstein"
        result.statistic = float(stats.wasserstein_distance(reference, current)) / norm
        return result
    ks = stats.ks_2samp(reference, current)
    result.method = "ks"
    result.statistic, result.p_value = float(ks.statistic), float(ks.pvalue)
    return result


def _categorical(
    result: FeatureDrift, reference: pd.Series, current: pd.Series, large: bool
) -> FeatureDrift:
    ref_counts, cur_counts = reference.value_counts(), current.value_counts()
    categories = ref_counts.index.union(cur_counts.index)
    ref_counts = ref_counts.reindex(categories, fill_value=0)
    cur_counts = cur_counts.reindex(categories, fill_value=0)
    result.psi = categorical_psi(ref_counts, cur_counts)
    if len(categories) < 2:
        result.drifted = False
        return _noted(result, "a single value in both samples: nothing can have moved")
    if large:
        result.method = "jensenshannon"
        result.statistic = float(
            distance.jensenshannon(ref_counts / ref_counts.sum(), cur_counts / cur_counts.sum())
        )
        return result
    # Without Yates' continuity correction: on two categories this is exactly the
    # two-proportion z-test (chi-squared = z squared), which Evidently runs there.
    table = np.vstack([ref_counts.to_numpy(), cur_counts.to_numpy()])
    chi2 = stats.chi2_contingency(table, correction=False)
    result.method = "chi2"
    result.statistic, result.p_value = float(chi2.statistic), float(chi2.pvalue)
    return result


def adjust(p_values: list[float], correction: Correction) -> list[float]:
    """p-values corrected for testing them together."""
    if not p_values or correction == "none":
        return list(p_values)
    if correction == "bonferroni":
        return [min(1.0, p * len(p_values)) for p in p_values]
    return [float(p) for p in stats.false_discovery_control(p_values, method="bh")]


def decide(result: FeatureDrift, config: DriftConfig, n_tests: int) -> FeatureDrift:
    """Set the decision from the statistic (and the adjusted p-value of a test)."""
    if result.method is None:
        return result
    threshold = config.threshold(result.method)
    result.threshold = threshold
    name = METHOD_NAMES[result.method]
    if result.method in TESTS:
        assert result.p_value is not None
        if result.p_adjusted is None:
            result.p_adjusted = result.p_value
        result.score = result.p_adjusted
        result.drifted = result.p_adjusted < threshold
        how = (
            f"p-value adjusted ({CORRECTION_NAMES[config.correction]}, {n_tests} tests)"
            if config.correction != "none" and n_tests > 1
            else "p-value"
        )
        result.rule = (
            f"{name}: {how} {result.score:.4g} {'<' if result.drifted else '>='} {threshold}"
        )
    else:
        assert result.statistic is not None
        result.score = result.statistic
        result.drifted = result.statistic >= threshold
        result.rule = f"{name}: {result.score:.4g} {'>=' if result.drifted else '<'} {threshold}"
    return result


def correct_window(rows: list[FeatureDrift], config: DriftConfig) -> list[FeatureDrift]:
    """Correct the p-values of one window's tests together, then decide again."""
    tests = [r for r in rows if r.method in TESTS and r.p_value is not None]
    adjusted = adjust([r.p_value for r in tests if r.p_value is not None], config.correction)
    for row, p in zip(tests, adjusted, strict=True):
        row.p_adjusted = p
        decide(row, config, len(tests))
    return rows


def window_drift(window: str, rows: Iterable[FeatureDrift], config: DriftConfig) -> WindowDrift:
    """Dataset drift of one window: the share of tested features that drifted."""
    rows = [r for r in rows if r.window == window]
    tested = [r for r in rows if r.drifted is not None]
    drifted = sum(1 for r in tested if r.drifted)
    share = drifted / len(tested) if tested else None
    return WindowDrift(window, len(rows), len(tested), drifted, share,
                       None if share is None else share >= config.drift_share)  # fmt: skip


def features_of(
    reference: pd.DataFrame, current: pd.DataFrame, exclude: Iterable[str] = ()
) -> list[str]:
    """Columns both tables have, in the reference's order, minus labels, times and `exclude`."""
    skip = set(exclude)
    return [
        c for c in reference.columns
        if c in current.columns and str(c).lower() not in NON_FEATURES
        and not str(c).startswith("prediction") and str(c) not in skip
    ]  # fmt: skip


def window_frame(current: pd.DataFrame, window: str, now: float) -> pd.DataFrame:
    """The rows of `current` (with its `_ts` column) inside one window."""
    span = WINDOWS[window]
    return current if span is None else current[current["_ts"] >= now - span]


def drift_table(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    now: float,
    config: DriftConfig | None = None,
    windows: Iterable[str] = WINDOWS,
) -> list[FeatureDrift]:
    """Drift of every shared feature in every window. `current` has a `_ts` column."""
    config = config or DriftConfig()
    results: list[FeatureDrift] = []
    features = features_of(reference, current, config.exclude)
    for window in windows:
        recent = window_frame(current, window, now)
        rows = [feature_drift(reference[f], recent[f], f, window, config) for f in features]
        results.extend(correct_window(rows, config))
    return results
