"""Recompute a model's baseline metrics from ground-truth feedback, with scikit-learn.

Baseline names come from MLflow runs, spelled many ways (`accuracy`,
`accuracy_score`, `training_f1_score`, `val_rmse`, ...). Each is matched to one
scikit-learn function; a name we cannot compute is reported with the reason.

Precision, recall and f1 average over the *model's* classes, not over the
classes a feedback batch happens to hold: one right answer of a 3-class model
is a perfect score, and a batch of classes {0, 2} is still multi-class. The
model's classes are those of its training data's target column (the run's
`data/dataset.csv`, or the reference put in its place) together with every
label in the ground truth and the predictions. Two classes or fewer is a
binary model, scored on its positive class: 1 for 0/1 (or -1/1) labels, else
the greater label, as scikit-learn orders them. Without a target column the
classes seen in the batch are all there is to go on.
Pure functions: call them through `asyncio.to_thread`.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from gateway.records.rows import labelled_pairs
from gateway.records.stores.base import InferenceRecord

_PREFIX = re.compile(r"^(training|train|test|testing|val|validation|eval|evaluation)[_\-./]")
_SUFFIX = re.compile(r"[_\-.](score|value)$")
# Names of a training table's label column, in order of preference (case-insensitive).
TARGET_COLUMNS = ("target", "label", "y")


@dataclass(frozen=True)
class Averaging:
    """How per-class precision, recall and f1 combine for one model."""

    average: str  # "binary" | "weighted" | what the metric's name asks for
    pos_label: Any = 1
    requested: str | None = None  # the averaging the metric's name spelled out


@dataclass(frozen=True)
class MetricSpec:
    compute: Callable[[np.ndarray, np.ndarray, Averaging], float]
    higher_is_better: bool
    needs: str = "labels"  # "labels" (classification) | "values" (regression) | "scores"


def _sorted(labels: Iterable[Any]) -> list[Any]:
    unique = set(labels)
    try:
        return sorted(unique)
    except TypeError:  # mixed types: any stable order will do
        return sorted(unique, key=repr)


def positive_label(classes: Sequence[Any]) -> Any:
    """The positive class of a binary model: scikit-learn's 1, else the greater label."""
    if not classes or set(classes) <= {0, 1} or set(classes) <= {-1, 1}:
        return 1
    return _sorted(classes)[-1]


def averaging(classes: Iterable[Any]) -> Averaging:
    """The averaging for a model with these classes: binary for two or fewer, else weighted."""
    known = _sorted(classes)
    if len(known) > 2:
        return Averaging("weighted")
    return Averaging("binary", positive_label(known))


def _classification(
    fn: Callable[..., float],
) -> Callable[[np.ndarray, np.ndarray, Averaging], float]:
    def compute(t: np.ndarray, p: np.ndarray, avg: Averaging) -> float:
        if avg.average == "binary":
            # NaN, not 0, when the positive class is absent: the score is undefined on
            # this batch, and a 0 would read as a collapse of the model.
            return float(fn(t, p, average="binary", pos_label=avg.pos_label,
                            zero_division=np.nan))  # fmt: skip
        # 0 for a class never predicted, as scikit-learn's default (and so the baseline) has it.
        return float(fn(t, p, average=avg.average, zero_division=0))

    return compute


def _roc_auc(t: np.ndarray, p: np.ndarray, avg: Averaging) -> float:
    if p.ndim == 2 and p.shape[1] == 2:
        p = p[:, 1]
    if p.ndim == 2:
        return float(skm.roc_auc_score(t, p, multi_class="ovr", average=avg.requested or "macro"))
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

_AVERAGED = {"f1", "precision", "recall"}

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


def needs_classes(names: Iterable[str]) -> bool:
    """Whether any of these metrics averages over classes (so the classes are worth reading)."""
    return any(canonical(name)[0] in _AVERAGED for name in names)


def training_classes(reference_csv: bytes | None) -> list[Any] | None:
    """The classes in a training table's target column, sorted; None without one."""
    if not reference_csv:
        return None
    try:
        header = pd.read_csv(io.BytesIO(reference_csv), nrows=0).columns
        by_name = {str(c).strip().lower(): c for c in header}
        column = next((by_name[n] for n in TARGET_COLUMNS if n in by_name), None)
        if column is None:
            return None
        values = pd.read_csv(io.BytesIO(reference_csv), usecols=[column])[column]
    except ValueError:  # not a readable CSV: pandas' parser and decode errors are ValueErrors
        return None
    return _sorted(values.dropna().tolist())


def _labels(values: np.ndarray) -> list[Any]:
    """The distinct labels of a 1-D array of labels; none for anything else."""
    if values.ndim != 1:
        return []
    try:
        return _sorted(values.tolist())
    except TypeError:  # unhashable values (lists, dicts): not labels
        return []


def compute_metrics(
    names: Sequence[str],
    y_true: Sequence[Any],
    y_pred: Sequence[Any],
    classes: Iterable[Any] | None = None,
) -> tuple[dict[str, float], dict[str, str]]:
    """Compute every metric of `names` it can; return (values, {name: why not}).

    `classes` are the model's known classes (see `training_classes`); labels seen
    in `y_true` and `y_pred` are added to them.
    """
    truth = np.asarray(y_true)
    predicted = np.asarray(y_pred)
    values: dict[str, float] = {}
    skipped: dict[str, str] = {}
    is_scores = predicted.ndim == 2 and np.issubdtype(predicted.dtype, np.floating)
    model_averaging = averaging(
        [*(classes or []), *_labels(truth), *([] if is_scores else _labels(predicted))]
    )
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
        avg = (
            replace(model_averaging, average=average, requested=average)
            if average
            else model_averaging
        )
        try:
            value = spec.compute(truth, predicted, avg)
        except (ValueError, TypeError) as exc:
            skipped[name] = f"scikit-learn could not compute it: {exc}"
            continue
        if math.isnan(value) and avg.average == "binary" and key in _AVERAGED:
            skipped[name] = (
                f"undefined on this batch: too few rows of the positive class {avg.pos_label!r}"
                " in the ground truth or the predictions"
            )
            continue
        if math.isnan(value) or math.isinf(value):
            skipped[name] = "the value is not a finite number"
            continue
        values[name] = value
    return values, skipped


def score_feedback(
    names: Sequence[str],
    y_true: Sequence[Any],
    y_pred: Sequence[Any],
    training_csv: bytes | None,
) -> tuple[dict[str, float], dict[str, str]]:
    """`compute_metrics` with the model's classes read from its training table."""
    classes = training_classes(training_csv) if needs_classes(names) else None
    return compute_metrics(names, y_true, y_pred, classes)


def score_calls(
    names: Sequence[str], calls: Sequence[InferenceRecord], training_csv: bytes | None
) -> tuple[dict[str, float], dict[str, str], int]:
    """`score_feedback` over the labelled rows of logged calls: (values, skipped, rows)."""
    truth, predicted = labelled_pairs(list(calls))
    if not truth:
        return {}, dict.fromkeys(names, "no labelled calls with predictions in this period"), 0
    values, skipped = score_feedback(names, truth, predicted, training_csv)
    return values, skipped, len(truth)


def is_degraded(name: str, baseline: float, value: float, tolerance: float) -> bool | None:
    """Worse than the baseline by more than `tolerance` (relative); None when undecidable."""
    better = higher_is_better(name)
    if better is None or not baseline:
        return None
    change = (value - baseline) / abs(baseline)
    return change < -tolerance if better else change > tolerance
