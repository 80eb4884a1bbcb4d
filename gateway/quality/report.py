"""The degradation report: input drift and metric decline, as a page and a zip.

`build_report` is pure and CPU-bound (pandas, SciPy, matplotlib): the API runs
it in a worker thread so inference latency does not move while it builds. The
page (`report.html`) is served as is by `GET /model/{key}/report` and is the
same file the zip holds.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from gateway.quality import drift
from gateway.quality.scores import higher_is_better, is_degraded
from gateway.records.rows import record_rows
from gateway.records.stores.base import Baseline, InferenceRecord, MetricsSnapshot

DEFAULT_TOLERANCE = 0.05
MAX_PLOTTED_FEATURES = 30
METRIC_COLUMNS = ["snapshot", "timestamp", "metric", "baseline", "value", "relative_change",
                  "degraded"]  # fmt: skip
DRIFT_COLUMNS = ["window", "feature", "kind", "method", "n_reference", "n_current",
                 "statistic", "p_value", "p_adjusted", "threshold", "psi", "drifted", "rule",
                 "note"]  # fmt: skip
WINDOW_COLUMNS = ["window", "n_features", "n_tested", "n_drifted", "share", "drifted"]


@dataclass
class ReportInput:
    key: str
    reference_csv: bytes | None
    records: Sequence[InferenceRecord]
    baseline: Baseline | None
    snapshots: Sequence[MetricsSnapshot]
    now: float
    tolerance: float = DEFAULT_TOLERANCE
    records_capped: bool = False
    config: drift.DriftConfig = field(default_factory=drift.DriftConfig)


@dataclass
class Report:
    """What a report build gives: the summary, the page, and (when asked for) the zip."""

    summary: dict[str, Any]
    html: str
    archive: bytes | None


def reference_frame(csv_bytes: bytes | None) -> pd.DataFrame:
    """The reference CSV as a table, every float exactly as written.

    pandas' default float parser is fast but can be an ulp off, which splits a
    value the clients send exactly into two: a drift that is not there.
    """
    if not csv_bytes:
        return pd.DataFrame()
    return pd.read_csv(io.BytesIO(csv_bytes), float_precision="round_trip")


def current_frame(records: Sequence[InferenceRecord]) -> pd.DataFrame:
    rows = []
    for record in records:
        for row in record_rows(record):
            row["_ts"] = record.ts
            rows.append(row)
    return pd.DataFrame(rows)


def metric_rows(
    baseline: Baseline | None, snapshots: Sequence[MetricsSnapshot], tolerance: float
) -> list[dict[str, Any]]:
    """Baseline vs each snapshot: relative change and a `degraded` flag per metric."""
    if baseline is None:
        return []
    rows = []
    for snap in snapshots:
        for name, value in snap.metrics.items():
            base = baseline.metrics.get(name)
            if base is None:
                continue
            change = (value - base) / abs(base) if base else None
            better = higher_is_better(name)
            degraded = is_degraded(name, base, value, tolerance)
            rows.append({
                "snapshot": snap.name,
                "timestamp": datetime.fromtimestamp(snap.ts, UTC).isoformat(),
                "metric": name, "baseline": base, "value": value,
                "relative_change": change, "higher_is_better": better, "degraded": degraded,
            })  # fmt: skip
    return rows


def _png(fig: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    return buffer.getvalue()


def _feature_plot(feature: str, reference: pd.Series, current: pd.Series) -> bytes:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.5, 2.8))
    ax = fig.add_subplot()
    reference, current = reference.dropna(), current.dropna()
    numbers = drift.numbers_of(reference, current)
    if numbers is not None and not drift.is_discrete(numbers[0]):
        ref, cur = numbers
        # Shared bin edges, so the two histograms compare bar for bar.
        bins = np.histogram_bin_edges(np.concatenate([ref, cur]), bins=20).tolist()
        ax.hist(ref, bins=bins, alpha=0.55, density=True, label=f"reference (n={len(ref)})")
        if len(cur):
            ax.hist(cur, bins=bins, alpha=0.55, density=True, label=f"recent (n={len(cur)})")
    else:
        # Bars by category; a discrete number's bars go by value (1 and 1.0 are one bar).
        ref_cat = pd.Series(numbers[0]) if numbers is not None else reference.astype(str)
        cur_cat = pd.Series(numbers[1]) if numbers is not None else current.astype(str)
        table = pd.DataFrame({"reference": ref_cat.value_counts(normalize=True),
                              "recent": cur_cat.value_counts(normalize=True)})  # fmt: skip
        table = table.fillna(0).head(20)
        if numbers is not None:
            table.index = pd.Index([f"{v:.4g}" for v in table.index])
        table.plot.bar(ax=ax)
    ax.set_title(feature, fontsize=10)
    ax.legend(fontsize=7)
    return _png(fig)


def _metrics_plot(rows: list[dict[str, Any]]) -> bytes | None:
    if not rows:
        return None
    from matplotlib.figure import Figure

    frame = pd.DataFrame(rows)
    fig = Figure(figsize=(6.5, 3.2))
    ax = fig.add_subplot()
    for i, (name, group) in enumerate(frame.groupby("metric")):
        color = f"C{i % 10}"
        ax.plot(
            pd.to_datetime(group["timestamp"], format="ISO8601"),
            group["value"],
            "o-",
            color=color,
            label=name,
        )
        ax.axhline(group["baseline"].iloc[0], color=color, linestyle="--", linewidth=0.8)
    ax.set_title("metrics from feedback (dashed: baseline)", fontsize=10)
    ax.legend(fontsize=7)
    fig.autofmt_xdate()
    return _png(fig)


def _csv(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def build_report(inp: ReportInput, *, archive: bool = True, page: bool = True) -> Report:
    """The report of one model version: the summary; the page (with its plots, the slow
    part) unless `page` is off; the zip when `archive` is asked for."""
    missing: list[str] = []
    reference = reference_frame(inp.reference_csv)
    if reference.empty:
        missing.append("reference data: log data/dataset.csv in the MLflow run or "
                       "PUT /model/{key}/reference with a CSV body")  # fmt: skip
    current = current_frame(inp.records)
    if current.empty:
        missing.append("logged inputs: no inference calls were logged for this model yet")
    drift_rows: list[dict[str, Any]] = []
    windows: list[dict[str, Any]] = []
    if not reference.empty and not current.empty:
        table = drift.drift_table(reference, current, inp.now, inp.config)
        drift_rows = [d.as_dict() for d in table]
        windows = [drift.window_drift(w, table, inp.config).as_dict() for w in drift.WINDOWS]
        if not drift_rows:
            missing.append(
                "shared features: the reference and the logged inputs have no column in common"
            )
    metrics = metric_rows(inp.baseline, inp.snapshots, inp.tolerance)
    if inp.baseline is None:
        missing.append("baseline metrics: the MLflow run logged none")
    if not inp.snapshots:
        missing.append("feedback: POST /model/{key}/set_new_metrics with ground truth")

    drifted: dict[str, list[str]] = {}
    for row in drift_rows:
        if row["drifted"]:
            drifted.setdefault(row["window"], []).append(row["feature"])
    latest = inp.snapshots[-1].name if inp.snapshots else None
    degraded = sorted({r["metric"] for r in metrics if r["degraded"] and r["snapshot"] == latest})
    status = "ok"
    if drifted and degraded:
        status = "drift_and_degradation"
    elif drifted:
        status = "drift"
    elif degraded:
        status = "degradation"
    elif not drift_rows and not metrics:
        status = "insufficient_data"
    generated = datetime.fromtimestamp(inp.now, UTC)
    summary: dict[str, Any] = {
        "key": inp.key,
        "generated_at": generated.isoformat(),
        "status": status,
        "thresholds": {
            **inp.config.describe(),
            "metric_relative_tolerance": inp.tolerance,
        },
        "windows": {k: (v / drift.DAY if v else None) for k, v in drift.WINDOWS.items()},
        "data": {
            "reference_rows": len(reference),
            "logged_rows": len(current),
            "logged_calls": len(inp.records),
            "logged_calls_capped": inp.records_capped,
            "snapshots": len(inp.snapshots),
        },
        "drifted_features": drifted,
        "dataset_drift": {w["window"]: w for w in windows},
        "degraded_metrics": degraded,
        "latest_snapshot": latest,
        "baseline": inp.baseline.metrics if inp.baseline else None,
        "missing": missing,
    }

    if not page and not archive:
        return Report(summary, "", None)
    plots: dict[str, bytes] = {}
    if not reference.empty and not current.empty:
        recent = current[current["_ts"] >= inp.now - 30 * drift.DAY]
        if recent.empty:
            recent = current
        shared = drift.features_of(reference, current, inp.config.exclude)
        for feature in shared[:MAX_PLOTTED_FEATURES]:
            plots[f"plots/feature_{_safe(feature)}.png"] = _feature_plot(
                feature, reference[feature], recent[feature]
            )
    metrics_png = _metrics_plot(metrics)
    if metrics_png:
        plots["plots/metrics.png"] = metrics_png

    html_page = _html(summary, drift_rows, windows, metrics, plots)
    if not archive:
        return Report(summary, html_page, None)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("summary.json", json.dumps(summary, indent=2))
        zf.writestr("drift.json", json.dumps(drift_rows, indent=2))
        zf.writestr("drift.csv", _csv(drift_rows))
        zf.writestr("metrics.csv", _csv(metrics))
        for name, data in plots.items():
            zf.writestr(name, data)
        zf.writestr("report.html", html_page)
    return Report(summary, html_page, buffer.getvalue())


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))[:80]


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _table(rows: list[dict[str, Any]], columns: list[str], flag: str) -> str:
    if not rows:
        return "<p><em>Nothing to show.</em></p>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        f"<tr class='{'bad' if r.get(flag) else ''}'>"
        + "".join(f"<td>{_fmt(r.get(c))}</td>" for c in columns)
        + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _img(data: bytes, alt: str) -> str:
    encoded = base64.b64encode(data).decode()
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{encoded}'>"


def _html(
    summary: dict[str, Any],
    drift_rows: list[dict[str, Any]],
    windows: list[dict[str, Any]],
    metrics: list[dict[str, Any]],
    plots: dict[str, bytes],
) -> str:
    t = summary["thresholds"]
    correction = html.escape(drift.CORRECTION_NAMES[t["correction"]])
    verdict = {
        "ok": "No drift and no metric decline found.",
        "drift": "Inputs have drifted from the reference data.",
        "degradation": "Metrics have fallen below the baseline.",
        "drift_and_degradation": "Inputs have drifted and metrics have fallen.",
        "insufficient_data": "Not enough data to judge yet.",
    }[summary["status"]]
    drifted = (
        "".join(
            f"<li><b>{html.escape(w)}</b>: {html.escape(', '.join(f))}</li>"
            for w, f in summary["drifted_features"].items()
        )
        or "<li>none</li>"
    )
    missing = "".join(f"<li>{html.escape(m)}</li>" for m in summary["missing"])
    degraded = html.escape(", ".join(summary["degraded_metrics"]) or "none")
    feature_imgs = "".join(
        _img(data, name) for name, data in plots.items() if name.startswith("plots/feature_")
    )
    metrics_img = (
        _img(plots["plots/metrics.png"], "metrics") if "plots/metrics.png" in plots else ""
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Degradation report: {html.escape(summary["key"])}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
.verdict {{ font-size: 1.3em; padding: .6em 1em; border-radius: 6px;
  background: {"#e7f6ea" if summary["status"] == "ok" else "#fdecea"}; }}
table {{ border-collapse: collapse; font-size: .85em; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: .25em .5em; text-align: right; }}
tr.bad td {{ background: #fdecea; }}
img {{ margin: .3em; border: 1px solid #eee; }}
</style></head><body>
<h1>Degradation report: {html.escape(summary["key"])}</h1>
<p>Generated {html.escape(summary["generated_at"])}.</p>
<p class="verdict"><b>{html.escape(summary["status"])}</b>: {verdict}</p>
<h2>Summary</h2>
<ul>
<li>Reference rows: {summary["data"]["reference_rows"]}; logged rows:
 {summary["data"]["logged_rows"]} from {summary["data"]["logged_calls"]} calls;
 feedback snapshots: {summary["data"]["snapshots"]}.</li>
<li>Degraded metrics (latest snapshot): {degraded}</li>
<li>Drifted features by window:<ul>{drifted}</ul></li>
</ul>
{f"<h3>Missing</h3><ul>{missing}</ul>" if missing else ""}
<p><small>How a feature is judged (the row's <code>method</code> and <code>rule</code> say
which applied): a numeric feature with at most {t["large_sample"]} values in either sample,
by the two-sample Kolmogorov-Smirnov test, p &lt; {t["ks_p_value"]}; with more, by the
Wasserstein distance over the reference's standard deviation, &ge; {t["wasserstein"]};
a categorical feature (or a number with a few repeating values), by the chi-squared test,
p &lt; {t["chi2_p_value"]}, or with more than {t["large_sample"]} values by the
Jensen-Shannon distance, &ge; {t["jensenshannon"]}. The p-values of one window are
corrected for testing many features together ({correction}). A window has dataset
drift when at least {t["drift_share"]:.0%} of its tested features drifted. PSI is shown
for every feature and decides nothing. Samples of fewer than {t["min_samples"]} values
are not tested. A metric has degraded when it is worse than its baseline by more than
{t["metric_relative_tolerance"]:.0%} (relative).</small></p>
<h2>Dataset drift by window</h2>
{_table(windows, WINDOW_COLUMNS, "drifted")}
<h2>Metric history against the baseline</h2>
{metrics_img}
{_table(metrics, METRIC_COLUMNS, "degraded")}
<h2>Feature distributions: reference vs last month</h2>
{feature_imgs or "<p><em>No plots: reference data or logged inputs are missing.</em></p>"}
<h2>Drift by feature and window</h2>
{_table(drift_rows, DRIFT_COLUMNS, "drifted")}
</body></html>
"""
