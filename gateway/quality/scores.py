"""Recompute a model's baseline metrics from ground-truth feedback, with scikit-learn.

Baseline names come from MLflow runs, spelled many ways (`accuracy`,
`accuracy_score`, `training_f1_score`, `val_rmse`, ...). Each is matched to one
scikit-learn function; a name we cannot compute is reported with the reason.
Pure functions: call them through `asyncio.to_thread`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn import metrics as skm

_PREFIX = re.compile(r"^(training|train|test|testing|val|validation|eval|evaluation)[_\-./]")
_SUFFIX = re.compile(r"[_\-.](score|value)$")


@dataclass(frozen=True)
class MetricSpec:
    compute: Callable[[np.ndarray, np.ndarray, str | None], float]
    higher_is_better: bool
    needs: str = "labels"  # "labels" (classification) | "values" (regression) | "scores"


def _avg(y_true: np.ndarray, requested: str | None) -> str:
    if requested:
        return requested
    return "binary" if len(np.unique(y_true)) <= 2 else "weighted"


def _classification(
    fn: Callable[..., float],
) -> Callable[[np.ndarray, np.ndarray, str | None], float]:
    return lambda t, p, avg: float(fn(t, p, average=_avg(t, avg), zero_division=0))


def _roc_auc(t: np.ndarray, p: np.ndarray, avg: str | None) -> float:
    if p.ndim == 2 and p.shape[1] == 2:
        p = p[:, 1]
    if p.ndim == 2:
        return float(skm.roc_auc_score(t, p, multi_class="ovr", average=avg or "macro"))
    return float(skm.roc_auc_score(t, p))


METRICS: dict[str, MetricSpec] = {
    "accuracy": MetricSpec(lambda t, p, _: float(skm.accuracy_score(t, p)), True),
    "balanced_accuracy": MetricSpec(lambda t, p, _: float(skm.balanced_accuracy_score(t, p)), True),
    "f1": MetricSpec(_classification(skm.f1_score), True),
    "precision": MetricSpec(_classification(skm.precision_score), True),
    "recall": MetricSpec(_classification(skm.recall_score), True),
    "matthews_corrcoef": MetricSpec(lambda t, p, _: float(skm.matthews_corrcoef(t, p)), True),
    "cohen_kappa": MetricSpec(lambda t, p, _: float(skm.cohen_kappa_score(t, p)), True),
    "roc_auc": MetricSpec(_roc_auc, True, needs="scores"),
    "log_loss": MetricSpec(lambda t, p, _: float(skm.log_loss(t, p)), False, needs="scores"),
    "mse": MetricSpec(lambda t, p, _: float(skm.mean_squared_error(t, p)), False, "values"),
    "rmse": MetricSpec(
        lambda t, p, _: float(math.sqrt(skm.mean_squared_error(t, p))), False, "values"
    ),
    "mae": MetricSpec(lambda t, p, _: float(skm.mean_absolute_error(t, p)), False, "values"),
    "mape": MetricSpec(
        lambda t, p, _: float(skm.mean_absolute_percentage_error(t, p)), False, "values"
    ),
    "median_absolute_error": MetricSpec(
        lambda t, p, _: float(skm.median_absolute_error(t, p)), False, "values"
    ),
    "max_error": MetricSpec(lambda t, p, _: float(skm.max_error(t, p)), False, "values"),
    "r2": MetricSpec(lambda t, p, _: float(skm.r2_score(t, p)), True, "values"),
    "explained_variance": MetricSpec(
        lambda t, p, _: float(skm.explained_variance_score(t, p)), True, "values"
    ),
}

ALIASES: dict[str, str] = {
    "acc": "accuracy", "accuracy_score": "accuracy",
    "balanced_accuracy_score": "balanced_accuracy",
    "f1_score": "f1", "f_score": "f1", "f1score": "f1",
    "precision_score": "precision", "recall_score": "recall",
    "mcc": "matthews_corrcoef", "kappa": "cohen_kappa", "cohen_kappa_score": "cohen_kappa",
    "auc": "roc_auc", "roc_auc_score": "roc_auc", "rocauc": "roc_auc",
    "logloss": "log_loss", "cross_entropy": "log_loss",
    "mean_squared_error": "mse", "root_mean_squared_error": "rmse",
    "mean_absolute_error": "mae", "mean_absolute_percentage_error": "mape",
    "r2_score": "r2", "r_squared": "r2",
    "explained_variance_score": "explained_variance",
}  # fmt: skip


def canonical(name: str) -> tuple[str | None, str | None]:
    """(metric key, averaging) for a baseline metric name, or (None, None)."""
    n = name.strip().lower().replace(" ", "_").replace("-", "_")
    n = _PREFIX.sub("", n)
    average = None
    for avg in ("macro", "micro", "weighted", "binary", "samples"):
        for pattern in (f"_{avg}", f"{avg}_"):
            if pattern in n:
                n = n.replace(pattern, "")
                average = avg
    for candidate in (n, _SUFFIX.sub("", n)):
        if candidate in METRICS:
            return candidate, average
        if candidate in ALIASES:
            return ALIASES[candidate], average
    return None, None


def higher_is_better(name: str) -> bool | None:
    key, _ = canonical(name)
    return METRICS[key].higher_is_better if key else None


def compute_metrics(
    names: Sequence[str], y_true: Sequence[Any], y_pred: Sequence[Any]
) -> tuple[dict[str, float], dict[str, str]]:
    """Compute every metric of `names` it can; return (values, {name: why not})."""
    truth = np.asarray(y_true)
    predicted = np.asarray(y_pred)
    values: dict[str, float] = {}
    skipped: dict[str, str] = {}
    is_scores = predicted.ndim == 2 and np.issubdtype(predicted.dtype, np.floating)
    for name in names:
        key, average = canonical(name)
        if key is None:
            skipped[name] = "not a metric the gateway knows how to compute"
            continue
        spec = METRICS[key]
        if spec.needs == "scores" and not is_scores:
            skipped[name] = "needs class probabilities, but the model returned labels"
            continue
        if spec.needs == "labels" and is_scores:
            skipped[name] = "needs class labels, but the model returned probabilities"
            continue
        try:
            value = spec.compute(truth, predicted, average)
        except (ValueError, TypeError) as exc:
            skipped[name] = f"scikit-learn could not compute it: {exc}"
            continue
        if math.isnan(value) or math.isinf(value):
            skipped[name] = "the value is not a finite number"
            continue
        values[name] = value
    return values, skipped
