"""Input drift per feature and time window: PSI, Kolmogorov-Smirnov, chi-squared.

Values are compared exactly: text is parsed with Python's correctly rounded
`float()`, because one value read two ways (an ulp apart) looks like two
distributions. A numeric feature with a few repeating values (a flag, a scaled
category) is compared as categories: the KS test assumes a continuous variable.
Pure functions over pandas objects; the report builder runs them in a worker.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

PSI_THRESHOLD = 0.2
P_VALUE_THRESHOLD = 0.05
MIN_SAMPLES = 5
PSI_BINS = 10
DAY = 86_400.0
WINDOWS: dict[str, float | None] = {
    "last_week": 7 * DAY,
    "last_month": 30 * DAY,
    "last_year": 365 * DAY,
    "all_time": None,
}
NON_FEATURES = {"timestamp", "_ts", "prediction", "target", "label", "y"}
# A numeric feature is discrete when its reference takes at most this many values,
# each seen MIN_PER_LEVEL times on average (a few repeating values, not a small
# sample of a continuous variable).
DISCRETE_MAX_LEVELS = 10
MIN_PER_LEVEL = 5
_EPS = 1e-6


@dataclass
class FeatureDrift:
    feature: str
    window: str
    kind: str  # "numeric" | "categorical"
    n_reference: int
    n_current: int
    psi: float | None = None
    ks_statistic: float | None = None
    ks_pvalue: float | None = None
    chi2_statistic: float | None = None
    chi2_pvalue: float | None = None
    drifted: bool | None = None
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v)
                for k, v in asdict(self).items()}  # fmt: skip


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
    """Both columns as exact floats, or None unless both are numbers."""
    ref, cur = numeric_values(reference), numeric_values(current)
    return None if ref is None or cur is None else (ref, cur)


def feature_drift(
    reference: pd.Series, current: pd.Series, feature: str, window: str
) -> FeatureDrift:
    reference, current = reference.dropna(), current.dropna()
    numbers = numbers_of(reference, current)
    discrete = numbers is not None and is_discrete(numbers[0])
    kind = "numeric" if numbers is not None and not discrete else "categorical"
    result = FeatureDrift(feature, window, kind, len(reference), len(current))
    if numbers is not None and discrete:
        levels = len(np.unique(numbers[0]))
        result.note = f"numeric with {levels} distinct values: compared as categories"
    if len(current) < MIN_SAMPLES or len(reference) < MIN_SAMPLES:
        return _noted(result, f"fewer than {MIN_SAMPLES} samples: not tested")
    if numbers is None:
        return _categorical(result, reference.astype(str), current.astype(str))
    if discrete:
        # Counted by value, so 1 read from a CSV and 1.0 logged as JSON are one category.
        return _categorical(result, pd.Series(numbers[0]), pd.Series(numbers[1]))
    return _numeric(result, *numbers)


def _noted(result: FeatureDrift, note: str) -> FeatureDrift:
    result.note = f"{result.note}; {note}" if result.note else note
    return result


def _numeric(result: FeatureDrift, reference: np.ndarray, current: np.ndarray) -> FeatureDrift:
    result.psi = psi(reference, current)
    ks = stats.ks_2samp(reference, current)
    result.ks_statistic, result.ks_pvalue = float(ks.statistic), float(ks.pvalue)
    result.drifted = result.psi >= PSI_THRESHOLD or result.ks_pvalue < P_VALUE_THRESHOLD
    return result


def _categorical(result: FeatureDrift, reference: pd.Series, current: pd.Series) -> FeatureDrift:
    ref_counts, cur_counts = reference.value_counts(), current.value_counts()
    categories = ref_counts.index.union(cur_counts.index)
    ref_counts = ref_counts.reindex(categories, fill_value=0)
    cur_counts = cur_counts.reindex(categories, fill_value=0)
    result.psi = categorical_psi(ref_counts, cur_counts)
    if len(categories) < 2:
        result.drifted = result.psi >= PSI_THRESHOLD
        return _noted(result, "a single category: chi-squared not applicable")
    chi2 = stats.chi2_contingency(np.vstack([ref_counts.to_numpy(), cur_counts.to_numpy()]))
    result.chi2_statistic, result.chi2_pvalue = float(chi2.statistic), float(chi2.pvalue)
    result.drifted = result.psi >= PSI_THRESHOLD or result.chi2_pvalue < P_VALUE_THRESHOLD
    return result


def features_of(reference: pd.DataFrame, current: pd.DataFrame) -> list[str]:
    """Columns both tables have, in the reference's order, minus labels and times."""
    return [
        c for c in reference.columns
        if c in current.columns and str(c).lower() not in NON_FEATURES
        and not str(c).startswith("prediction")
    ]  # fmt: skip


def drift_table(reference: pd.DataFrame, current: pd.DataFrame, now: float) -> list[FeatureDrift]:
    """Drift of every shared feature in every window. `current` has a `_ts` column."""
    results = []
    features = features_of(reference, current)
    for window, span in WINDOWS.items():
        recent = current if span is None else current[current["_ts"] >= now - span]
        for feature in features:
            results.append(feature_drift(reference[feature], recent[feature], feature, window))
    return results
