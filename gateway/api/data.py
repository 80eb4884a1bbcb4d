"""The data plane's API: dataset export, baselines, feedback metrics, reference data, reports.

Paths are the original's (`/model/{key}/metrics`, `/set_new_metrics`, `/dataset`,
`/degradation_report`, ...), plus ground truth by request id (`/feedback`), the
metrics of labelled calls (`/metrics/live`) and the report as a page (`/report`).
Heavy work (metrics, reports) runs in worker threads.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

from aiohttp import web

from gateway.app_keys import REGISTRY, ROUTES, SETTINGS, STORE, UPSTREAM
from gateway.dataplane.backend_call import call_backend
from gateway.dataplane.proxy import lookup, wake
from gateway.edge.params import read_body, read_json_object, resolve_key, single_query
from gateway.edge.request_ids import request_id
from gateway.errors import (
    BackendFailed,
    BadRequest,
    GatewayError,
    UnsupportedMediaType,
)
from gateway.quality import feedback as fb
from gateway.quality.monitor import drift_config, last_calls, text_size
from gateway.quality.report import DEFAULT_TOLERANCE, ReportInput, build_report, reference_frame
from gateway.quality.scores import is_degraded, needs_classes, score_calls, score_feedback
from gateway.records.privacy import parse_rules
from gateway.records.rows import (
    columns_of,
    csv_chunk,
    csv_line,
    jsonl_chunk,
    ordered_columns,
    prediction_values,
)
from gateway.records.stores.base import InferenceRecord, MetricsSnapshot
from gateway.settings import Settings

logger = logging.getLogger(__name__)

_SNAPSHOT_NAME = re.compile(r"metrics-\d{8}T\d{6}\d{6}Z(-\d+)?\.json")
_FEEDBACK_KEYS = ("results", "timestamp")
_INPUT_KEYS = ("dataframe_split", "dataframe_records", "instances", "inputs")
# Serializes "pick a free snapshot name, then store it" within the process.
_SNAPSHOT_LOCK = web.AppKey("snapshot_lock", asyncio.Lock)


class BaselineNotFound(GatewayError):
    status, code = 404, "baseline_not_found"


class SnapshotNotFound(GatewayError):
    status, code = 404, "snapshot_not_found"


class PredictionFailed(GatewayError):
    status, code = 400, "prediction_failed"


# ------------------------------------------------------------------ helpers


def _parse_date(request: web.Request, name: str) -> date | None:
    raw = single_query(request, name)
    if raw is None or raw == "":
        return None
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a date as YYYY-MM-DD, not {raw!r}") from None


def _epoch(day: date) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()


def _end_epoch(day: date | None) -> float | None:
    """Where an inclusive end date stops; the last date there is has no end."""
    if day is None or day == date.max:
        return None
    return _epoch(day + timedelta(days=1))


async def _require_known(
    request: web.Request, name: str, version: str, *, has_data: bool = False
) -> None:
    """A 404 for a model version that is not deployed, not in the registry, never logged.

    Logged calls outlive the registry entry (a deleted version's history is still
    wanted), so they are enough, as is any data the caller already found
    (`has_data`); the registry is asked last, and only for keys with nothing.
    """
    if has_data or request.match_info["key"] in request.app[ROUTES]:
        return
    if await request.app[STORE].has_records(name, version):
        return
    await request.app[REGISTRY].resolve(name, version)  # ModelNotFound / VersionNotFound


# ------------------------------------------------------------------ dataset


async def dataset(request: web.Request) -> web.StreamResponse:
    """GET /model/{key}/dataset: every logged instance, streamed as CSV or JSON lines."""
    key = request.match_info["key"]
    name, version = resolve_key(request, key)
    start, end = _parse_date(request, "start_date"), _parse_date(request, "end_date")
    if start and end and end < start:
        raise BadRequest("end_date is before start_date")
    fmt = single_query(request, "format") or "csv"
    if fmt not in ("csv", "jsonl"):
        raise BadRequest("format must be csv or jsonl")
    store = request.app[STORE]
    start_ts = _epoch(start) if start else None
    end_ts = _end_epoch(end)  # end_date is inclusive
    # Decided before the response starts: after prepare() the status is sent.
    await _require_known(request, name, version)

    response = web.StreamResponse(
        headers={
            "Content-Type": "text/csv; charset=utf-8" if fmt == "csv" else "application/x-ndjson",
            "Content-Disposition": f'attachment; filename="{key}-dataset.{fmt}"',
        }
    )
    await response.prepare(request)
    records = store.iter_records
    # Parsing and formatting run in a worker thread, a chunk of calls at a time, so a
    # large export never holds the event loop that serves inference.
    if fmt == "jsonl":
        async for chunk in _chunks(records(name, version, start_ts, end_ts)):
            await response.write((await asyncio.to_thread(jsonl_chunk, chunk)).encode())
    else:
        # Two passes keep memory flat: the first learns the columns, the second writes.
        columns: dict[str, None] = {}
        async for chunk in _chunks(records(name, version, start_ts, end_ts)):
            columns.update(await asyncio.to_thread(columns_of, chunk))
        ordered = ordered_columns(columns)
        if ordered:
            await response.write(csv_line(ordered).encode())
        async for chunk in _chunks(records(name, version, start_ts, end_ts)):
            await response.write((await asyncio.to_thread(csv_chunk, chunk, ordered)).encode())
    await response.write_eof()
    return response


async def _chunks(
    source: AsyncIterator[InferenceRecord], size: int = 500, max_chars: int = 2_000_000
) -> AsyncIterator[list[InferenceRecord]]:
    """Calls in chunks of at most `size`, and of about `max_chars` of logged text: a
    chunk's rows are made in one go, so large calls make small chunks."""
    chunk: list[InferenceRecord] = []
    chars = 0
    async for item in source:
        chunk.append(item)
        chars += text_size(item)
        if len(chunk) >= size or chars >= max_chars:
            yield chunk
            chunk, chars = [], 0
    if chunk:
        yield chunk


async def _last_calls(
    source: AsyncIterator[InferenceRecord], settings: Settings
) -> tuple[list[InferenceRecord], bool]:
    """The newest calls a report or live metrics read: at most GATEWAY_REPORT_MAX_CALLS
    calls and GATEWAY_REPORT_MAX_MB of their logged text, and whether older ones were left."""
    max_chars = int(settings.report_max_mb * 1024 * 1024)
    return await last_calls(source, settings.report_max_calls, max_chars)


# ---------------------------------------------------------------- baselines


async def get_metrics(request: web.Request) -> web.Response:
    """GET /model/{key}/metrics: the baseline metrics from the model's MLflow run."""
    name, version = resolve_key(request, request.match_info["key"])
    baseline = await request.app[STORE].get_baseline(name, version)
    if baseline is None:
        await _require_known(request, name, version)
        raise BaselineNotFound(
            f"no baseline metrics for {name}-{version}: deploy it, or its run logged none"
        )
    return web.json_response(
        {
            "model_name": name,
            "version": version,
            "metrics": baseline.metrics,
            "source": baseline.source,
            "updated_at": datetime.fromtimestamp(baseline.updated_at, UTC).isoformat(),
        }
    )


async def put_reference(request: web.Request) -> web.Response:
    """PUT /model/{key}/reference: a CSV of representative inputs for drift checks."""
    name, version = resolve_key(request, request.match_info["key"])
    body = await read_body(request)
    if not body.strip():
        raise BadRequest("send the reference data as a CSV body with a header row")
    await _require_known(request, name, version)  # no data for a version that never was

    def check() -> tuple[int, list[str]]:
        frame = reference_frame(body)  # as the report will read it
        return len(frame), [str(c) for c in frame.columns]

    try:
        rows, columns = await asyncio.to_thread(check)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body is not a readable CSV: {exc}") from None
    if rows == 0:
        raise BadRequest("the CSV has a header but no rows")
    await request.app[STORE].set_reference(name, version, body)
    return web.json_response({"model_name": name, "version": version, "rows": rows,
                              "columns": columns})  # fmt: skip


# ---------------------------------------------------------- feedback metrics


def _snapshot_name(ts: float) -> str:
    return "metrics-" + datetime.fromtimestamp(ts, UTC).strftime("%Y%m%dT%H%M%S%fZ") + ".json"


def _feedback_timestamp(raw: Any) -> float:
    """Seconds since the epoch of a snapshot, from a number or an ISO 8601 string.

    It must name a moment a date can show (years 1 to 9999): the snapshot's name
    and its `timestamp` are made from it.
    """
    ts: float | None = None
    if raw is None:
        return time.time()
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        ts = float(raw) if abs(raw) < 1e12 else None  # False for NaN; no float overflow
    elif isinstance(raw, str):
        try:
            parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
            ts = (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
        except (ValueError, OverflowError):
            ts = None
    try:
        if ts is not None:
            _snapshot_name(ts)
            return ts
    except (ValueError, OverflowError, OSError):
        pass
    raise BadRequest(
        "timestamp must be an ISO 8601 string or seconds since the epoch, between the"
        " years 1 and 9999"
    )


async def _predict(request: web.Request, payload: dict[str, Any]) -> list[Any]:
    """Predictions for `payload` through the same pooled path as inference."""
    deployment = lookup(request)
    if not deployment.replicas:  # scaled to zero: the data API wakes it like a call does
        await wake(request, deployment)
    answer = await call_backend(
        request.app[UPSTREAM], deployment, "POST", "/invocations",
        "Content-Type: application/json\r\n" + f"X-Request-ID: {request_id(request)}\r\n",
        json.dumps(payload).encode(), None, whole=True,
    )  # fmt: skip
    status, body = answer.status, answer.body
    if status >= 400:
        detail = body.decode("utf-8", "replace")[:2000]
        if status >= 500:  # the backend failed, not the caller's inputs
            raise BackendFailed(f"the model failed on the inputs ({status}): {detail}")
        raise PredictionFailed(f"the model rejected the inputs ({status}): {detail}")
    return prediction_values(body)


async def set_new_metrics(request: web.Request) -> web.Response:
    """POST /model/{key}/set_new_metrics: inputs plus ground truth -> a metrics snapshot."""
    key = request.match_info["key"]
    name, version = resolve_key(request, key)
    data = await read_json_object(request)
    results = data.get("results")
    if not isinstance(results, list) or not results:
        raise BadRequest('"results" must be a non-empty list of ground-truth values')
    inputs = {k: v for k, v in data.items() if k not in _FEEDBACK_KEYS}
    if not any(k in inputs for k in _INPUT_KEYS):
        raise BadRequest(f"give the inputs as one of {', '.join(_INPUT_KEYS)}")
    ts = _feedback_timestamp(data.get("timestamp"))
    store = request.app[STORE]
    baseline = await store.get_baseline(name, version)
    if baseline is None or not baseline.metrics:
        raise BadRequest(f"{key} has no baseline metrics to recompute; its MLflow run logged none")
    predictions = await _predict(request, inputs)
    if len(predictions) != len(results):
        raise BadRequest(
            f"{len(results)} results were given for {len(predictions)} predictions;"
            " give one ground-truth value per input row"
        )
    names = list(baseline.metrics)
    # The model's classes come from its training table: a batch shows only some of them.
    training = await store.get_reference(name, version) if needs_classes(names) else None
    values, skipped = await asyncio.to_thread(score_feedback, names, results, predictions, training)
    snapshot = MetricsSnapshot(_snapshot_name(ts), ts, values, skipped, len(results))
    snapshot = await _add_snapshot(request, name, version, snapshot)
    body = snapshot.as_dict()
    body["baseline"] = baseline.metrics
    return web.json_response(body, status=201)


async def _add_snapshot(
    request: web.Request, name: str, version: str, snapshot: MetricsSnapshot
) -> MetricsSnapshot:
    """Store `snapshot` under a name the version's other snapshots do not have.

    The name comes from the timestamp, so the same timestamp posted twice gets
    `-1`, `-2`, ... (the original's file names allow the suffix).
    """
    store = request.app[STORE]
    async with request.app[_SNAPSHOT_LOCK]:
        taken = {s.name for s in await store.list_snapshots(name, version)}
        stem, unique, n = snapshot.name.removesuffix(".json"), snapshot.name, 0
        while unique in taken:
            n += 1
            unique = f"{stem}-{n}.json"
        snapshot.name = unique
        await store.add_snapshot(name, version, snapshot)
    return snapshot


async def new_metrics_file_names(request: web.Request) -> web.Response:
    name, version = resolve_key(request, request.match_info["key"])
    snapshots = await request.app[STORE].list_snapshots(name, version)
    await _require_known(request, name, version, has_data=bool(snapshots))
    return web.json_response({"files": [s.name for s in snapshots]})


async def new_metrics(request: web.Request) -> web.Response:
    name, version = resolve_key(request, request.match_info["key"])
    file_name = request.match_info["name"]
    if not _SNAPSHOT_NAME.fullmatch(file_name):
        raise BadRequest(
            f"{file_name!r} is not a metrics file name; list them at new_metrics_file_name"
        )
    snapshot = await request.app[STORE].get_snapshot(name, version, file_name)
    if snapshot is None:
        raise SnapshotNotFound(f"no metrics file {file_name!r} for {name}-{version}")
    return web.json_response(snapshot.as_dict())


async def metrics_history(request: web.Request) -> web.Response:
    name, version = resolve_key(request, request.match_info["key"])
    store = request.app[STORE]
    baseline = await store.get_baseline(name, version)
    snapshots = await store.list_snapshots(name, version)
    await _require_known(request, name, version, has_data=baseline is not None or bool(snapshots))
    return web.json_response(
        {
            "model_name": name,
            "version": version,
            "baseline": baseline.metrics if baseline else None,
            "snapshots": [s.as_dict() for s in snapshots],
        }
    )


# ------------------------------------------------------------------- feedback


async def feedback(request: web.Request) -> web.Response:
    """POST /model/{key}/feedback: ground truth for earlier calls, by their request ids."""
    name, version = resolve_key(request, request.match_info["key"])
    content_type = request.content_type
    if content_type not in ("application/json", "text/json", "text/csv",
                            "application/octet-stream"):  # fmt: skip
        raise UnsupportedMediaType(
            "send JSON (application/json) or CSV (text/csv), not " + repr(content_type)
        )
    body = await read_body(request)
    parse = fb.parse_csv if content_type == "text/csv" else fb.parse_json
    try:
        given = await asyncio.to_thread(parse, body)
    except fb.FeedbackError as exc:
        raise BadRequest(str(exc)) from None
    store = request.app[STORE]
    await _require_known(request, name, version)
    calls = await store.find_calls(name, version, list(given.labels))
    joined = await asyncio.to_thread(fb.join, given, calls)
    labelled = await store.label_records(joined.labels, time.time())
    # A call labelled by someone else between the look-up and the write is not ours.
    matched = [rid for rid, ids in joined.matched.items() if labelled.intersection(ids)]
    late = [rid for rid in joined.matched if rid not in set(matched)]
    already = joined.already_labelled + late
    listed = fb.MAX_LISTED
    return web.json_response(
        {
            "model_name": name,
            "version": version,
            "received": len(given.labels) + len(given.duplicates),
            "matched": len(matched),
            "unknown": len(joined.unknown),
            "already_labelled": len(already),
            "duplicate": len(given.duplicates),
            "rejected": len(joined.rejected),
            "labelled_rows": sum(len(given.labels[rid]) for rid in matched),
            "unknown_ids": joined.unknown[:listed],
            "already_labelled_ids": already[:listed],
            "duplicate_ids": given.duplicates[:listed],
            "rejected_ids": joined.rejected[:listed],
        }
    )


async def live_metrics(request: web.Request) -> web.Response:
    """GET /model/{key}/metrics/live: the baseline's metrics over labelled calls of a period."""
    name, version = resolve_key(request, request.match_info["key"])
    start, end = _parse_date(request, "start_date"), _parse_date(request, "end_date")
    if start and end and end < start:
        raise BadRequest("end_date is before start_date")
    store, settings = request.app[STORE], request.app[SETTINGS]
    baseline = await store.get_baseline(name, version)
    if baseline is None or not baseline.metrics:
        await _require_known(request, name, version)
        raise BaselineNotFound(
            f"no baseline metrics for {name}-{version}: deploy it, or its run logged none"
        )
    start_ts = _epoch(start) if start else None
    end_ts = _end_epoch(end)
    calls, capped = await _last_calls(
        store.iter_records(name, version, start_ts, end_ts, labelled=True), settings
    )
    names = list(baseline.metrics)
    training = await store.get_reference(name, version) if needs_classes(names) else None
    values, skipped, rows = await asyncio.to_thread(score_calls, names, calls, training)
    degraded = {
        metric: verdict
        for metric, value in values.items()
        if (verdict := is_degraded(metric, baseline.metrics[metric], value, DEFAULT_TOLERANCE))
        is not None
    }
    return web.json_response(
        {
            "model_name": name,
            "version": version,
            "start_date": start.isoformat() if start else None,
            "end_date": end.isoformat() if end else None,
            "n_calls": len(calls),
            "n_samples": rows,
            "capped": capped,
            "metrics": values,
            "skipped": skipped,
            "baseline": baseline.metrics,
            "degraded": degraded,
        }
    )


# ------------------------------------------------------------------- report


def _tolerance(request: web.Request) -> float:
    raw_tolerance = single_query(request, "tolerance")
    try:
        tolerance = float(raw_tolerance) if raw_tolerance is not None else DEFAULT_TOLERANCE
    except ValueError:
        raise BadRequest("tolerance must be a number such as 0.05") from None
    if not 0 <= tolerance < 10:
        raise BadRequest("tolerance must be between 0 and 10")
    return tolerance


async def _report_input(request: web.Request, tolerance: float) -> ReportInput:
    """Everything a report reads, or a 404 for a key that never existed."""
    key = request.match_info["key"]
    name, version = resolve_key(request, key)
    store, settings = request.app[STORE], request.app[SETTINGS]
    records, capped = await _last_calls(store.iter_records(name, version), settings)
    hashed = frozenset(n for n, a in parse_rules(settings.log_redact).items() if a == "hash")
    inp = ReportInput(
        key=key, reference_csv=await store.get_reference(name, version), records=records,
        baseline=await store.get_baseline(name, version),
        snapshots=await store.list_snapshots(name, version), now=time.time(),
        tolerance=tolerance, records_capped=capped,
        config=drift_config(settings, hashed),
    )  # fmt: skip
    has_data = bool(records or inp.reference_csv or inp.baseline or inp.snapshots)
    await _require_known(request, name, version, has_data=has_data)
    return inp


async def degradation_report(request: web.Request) -> web.StreamResponse:
    """GET /model/{key}/degradation_report: a zip (or `?format=json`: the summary)."""
    key = request.match_info["key"]
    resolve_key(request, key)
    fmt = single_query(request, "format") or "zip"
    if fmt not in ("zip", "json"):
        raise BadRequest("format must be zip or json")
    inp = await _report_input(request, _tolerance(request))
    zipped = fmt == "zip"
    report = await asyncio.to_thread(build_report, inp, archive=zipped, page=zipped)
    if report.archive is None:
        return web.json_response(report.summary)
    stamp = datetime.fromtimestamp(inp.now, UTC).strftime("%Y%m%d-%H%M%S")
    return web.Response(
        body=report.archive,
        content_type="application/zip",
        headers={
            "Content-Disposition": f'attachment; filename="{key}-degradation-report-{stamp}.zip"'
        },
    )


async def report_page(request: web.Request) -> web.Response:
    """GET /model/{key}/report: the report's page itself, for a browser."""
    resolve_key(request, request.match_info["key"])
    inp = await _report_input(request, _tolerance(request))
    report = await asyncio.to_thread(build_report, inp, archive=False)
    return web.Response(text=report.html, content_type="text/html", charset="utf-8")


def add_routes(app: web.Application) -> None:
    app[_SNAPSHOT_LOCK] = asyncio.Lock()
    r = app.router
    r.add_get("/model/{key}/dataset", dataset)
    r.add_get("/model/{key}/metrics", get_metrics)
    r.add_get("/model/{key}/metrics/history", metrics_history)
    r.add_post("/model/{key}/set_new_metrics", set_new_metrics)
    r.add_get("/model/{key}/new_metrics_file_name", new_metrics_file_names)
    r.add_get("/model/{key}/new_metrics/{name}", new_metrics)
    r.add_put("/model/{key}/reference", put_reference)
    r.add_get("/model/{key}/degradation_report", degradation_report)
    r.add_get("/model/{key}/report", report_page)
    r.add_post("/model/{key}/feedback", feedback)
    r.add_get("/model/{key}/metrics/live", live_metrics)
