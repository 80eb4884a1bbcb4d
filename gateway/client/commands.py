"""The client's subcommands: argparse wiring and one function per command.

Each command returns its exit code: 0 done, 1 failed (one line on stderr, and
with --json the error object on stdout too), 2 usage (argparse), 130 Ctrl-C.
The environment is read here and only here: `GATEWAY_URL` and the credentials
(see transport.Target); the server's Settings are never built.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import sys
import time
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from gateway.client.inputs import InputError, csv_chunks, json_chunks, open_counted
from gateway.client.render import (
    PredictionWriter,
    StatusLine,
    deployments_table,
    predictions_of,
    replica_summary,
    split_failure,
)
from gateway.client.transport import (
    ApiError,
    ClientFailure,
    GatewayClient,
    Reply,
    Target,
    path,
)
from gateway.client.watch import watch_call

COMMANDS = ("ls", "deploy", "scale", "undeploy", "predict", "logs", "report")
DEFAULT_TIMEOUT = 120.0
DEPLOY_TIMEOUT = 900.0  # the gateway bounds a deploy by GATEWAY_DEPLOY_TIMEOUT itself


class Failed(Exception):
    """A command's own failure, already worded for stderr (and the gateway's error
    behind it, for --json)."""

    def __init__(self, message: str, api: ApiError | None = None) -> None:
        super().__init__(message)
        self.api = api


@dataclass
class Context:
    args: argparse.Namespace
    env: Mapping[str, str]
    out: TextIO
    err: TextIO
    tty: bool

    def client(self, timeout: float = DEFAULT_TIMEOUT, inference: bool = False) -> GatewayClient:
        target = Target.from_env(self.env, self.args.url, inference=inference)
        return GatewayClient(target, self.args.timeout or timeout)

    def status(self) -> StatusLine:
        return StatusLine(self.err, self.tty)

    def print(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def print_json(self, value: Any) -> None:
        self.print(json.dumps(value, indent=2))


# ------------------------------------------------------------------ commands


def ls(ctx: Context) -> int:
    with ctx.client() as client:
        deployed = client.get("/get_deployed_models").json()
    if ctx.args.as_json:
        ctx.print_json(deployed)
    elif not deployed:
        ctx.print("nothing is deployed")
    else:
        ctx.print(deployments_table(deployed))
    return 0


def deploy(ctx: Context) -> int:
    a = ctx.args
    if a.target.startswith("@"):
        alias = a.target[1:]
        key, route = f"{a.model}@{alias}", path("deploy", f"{a.model}@{alias}")
    else:
        key, route = f"{a.model}-{a.target}", path("deploy", a.model, a.target)
    route += _query(replicas=a.replicas, max_batch_size=a.max_batch_size,
                    max_batch_delay_ms=a.max_batch_delay_ms,
                    replace="true" if a.replace else None)  # fmt: skip
    with ctx.client() as client:
        known = key in client.get("/get_deployed_models").json()
    # No async deploy in the API: without --wait, a new key is left to the gateway
    # once it lists it as starting; a change to a deployed key is always waited for.
    deploying = GatewayClient(Target.from_env(ctx.env, a.url), a.timeout or DEPLOY_TIMEOUT)

    def call() -> Reply:
        # Closed by the thread that used it: without --wait this may be after we return.
        with deploying:
            return deploying.post(route)

    try:
        outcome = watch_call(
            call, target=deploying.target, key=key, label="deploying", status=ctx.status(),
            stop_when_listed=not a.wait and not known,
        )  # fmt: skip
    except ApiError as exc:
        raise _deploy_failed(key, exc) from None
    if outcome.reply is None:
        if a.as_json:
            ctx.print_json({"key": key, "waited": False, **(outcome.entry or {})})
        else:
            ctx.print(f"{key} is starting; `modelgw ls` shows when it is ready"
                      f" (or `modelgw deploy ... --wait` to wait)")  # fmt: skip
        return 0
    body = outcome.reply.json()
    if a.as_json:
        ctx.print_json(body)
    else:
        summary, _ = replica_summary(outcome.entry)
        ctx.print(str(body.get("message", f"deployed {key}")))
        ctx.print(f"{body.get('key', key)}: {summary} after {outcome.elapsed:.1f}s")
    return 0


def _deploy_failed(key: str, exc: ApiError) -> Failed:
    head, tail = split_failure(exc.detail)
    lines = [f"deploy of {key} failed: {head} (HTTP {exc.status} {exc.code})"]
    if tail:
        lines.append("last output of the backend:")
        lines += [f"  {line}" for line in tail]
    return Failed("\n".join(lines), exc)


def scale(ctx: Context) -> int:
    key, replicas = ctx.args.key, ctx.args.replicas
    with GatewayClient(Target.from_env(ctx.env, ctx.args.url),
                       ctx.args.timeout or DEPLOY_TIMEOUT) as client:  # fmt: skip
        outcome = watch_call(
            lambda: client.post(path("scale", key) + _query(replicas=replicas)),
            target=client.target, key=key, label="scaling", status=ctx.status(),
        )  # fmt: skip
    assert outcome.reply is not None
    body = outcome.reply.json()
    if ctx.args.as_json:
        ctx.print_json(body)
    else:
        summary, _ = replica_summary(outcome.entry)
        ctx.print(str(body.get("message", f"scaled {key}")))
        ctx.print(f"{key}: {summary}")
    return 0


def undeploy(ctx: Context) -> int:
    with ctx.client(DEPLOY_TIMEOUT) as client:
        body = client.post(path("undeploy", ctx.args.key)).json()
    if ctx.args.as_json:
        ctx.print_json(body)
    else:
        ctx.print(str(body.get("message", f"undeployed {ctx.args.key}")))
    return 0


def predict(ctx: Context) -> int:
    a = ctx.args
    name = a.input_csv if a.input_csv is not None else a.input_json
    fmt = a.format or ("csv" if a.input_csv is not None else "jsonl")
    raw, size = open_counted(name)
    chunks = (csv_chunks if a.input_csv is not None else json_chunks)(raw, a.chunk_rows)
    writer = PredictionWriter(ctx.out, fmt)
    status = StatusLine(ctx.err, ctx.tty) if not a.quiet else None
    started, rows, count = time.monotonic(), 0, 0
    with raw, ctx.client(inference=True) as client:
        for chunk in chunks:
            try:
                answer = client.post(path(a.key), chunk.body, chunk.content_type).json()
                predictions = predictions_of(answer)
            except (ApiError, ClientFailure, ValueError) as exc:
                where = f"rows {chunk.first_row}-{chunk.first_row + (chunk.rows or 1) - 1}"
                raise Failed(f"chunk {count + 1} ({where}) failed: {exc}") from None
            if chunk.rows is not None and len(predictions) != chunk.rows:
                raise Failed(f"chunk {count + 1}: the model answered {len(predictions)}"
                             f" predictions for {chunk.rows} rows")  # fmt: skip
            writer.write(predictions)
            rows, count = rows + len(predictions), count + 1
            if status is not None:
                done = f", {raw.count / size:.0%} of {name}" if size else ""
                status.update(f"{a.key}: {rows:,} rows in {count} chunk(s){done},"
                              f" {time.monotonic() - started:.1f}s")  # fmt: skip
    if status is not None:
        status.clear()
        ctx.err.write(f"{a.key}: {rows:,} predictions from {count} chunk(s)"
                      f" in {time.monotonic() - started:.1f}s\n")  # fmt: skip
    return 0


def logs(ctx: Context) -> int:
    a = ctx.args
    route = path("logs", a.key) + _query(replica=a.replica, lines=a.lines)
    with ctx.client() as client:
        body = client.get(route).json()
        if a.as_json and not a.follow:
            ctx.print_json(body)
            return 0
        # Following shows only finished lines: one still being written would print
        # again, longer, on the next poll.
        shown = _tails(body, complete_only=a.follow)
        for replica, lines in shown.items():
            _show(ctx, replica, lines, several=len(shown) > 1)
        if not a.follow:
            return 0
        try:
            while True:
                time.sleep(a.interval)
                latest = _tails(client.get(route).json(), complete_only=True)
                for replica, lines in latest.items():
                    fresh = new_lines(shown.get(replica, []), lines)
                    _show(ctx, replica, fresh, several=len(latest) > 1)
                shown = latest
        except KeyboardInterrupt:  # the way to stop following
            return 0


def _tails(body: Any, complete_only: bool) -> dict[str, list[str]]:
    """Each replica's recent lines, from `{"replicas": [{"replica", "log"}, ...]}`."""
    replicas = body.get("replicas") if isinstance(body, dict) else None
    if not isinstance(replicas, list):
        raise ClientFailure("the gateway's /logs answer has no list of replicas")
    tails = {}
    for entry in replicas:
        text = str(entry.get("log") or "") if isinstance(entry, dict) else ""
        lines = text.splitlines()
        if complete_only and text and not text.endswith("\n"):
            lines = lines[:-1]
        tails[str(entry.get("replica") if isinstance(entry, dict) else "?")] = lines
    return tails


def _show(ctx: Context, replica: str, lines: list[str], several: bool) -> None:
    for line in lines:
        if ctx.args.as_json:
            ctx.print(json.dumps({"replica": replica, "line": line}))
        else:
            ctx.print(f"[{replica}] {line}" if several else line)


def new_lines(before: list[str], now: list[str]) -> list[str]:
    """The lines of `now` not in `before`: both are the tail of one growing log, so
    the longest end of `before` that starts `now` is what was already shown. (A line
    repeated verbatim across polls is indistinguishable from no new line.)"""
    for overlap in range(min(len(before), len(now)), 0, -1):
        if before[-overlap:] == now[:overlap]:
            return now[overlap:]
    return now


def report(ctx: Context) -> int:
    a = ctx.args
    route = path("model", a.key, "degradation_report")
    with ctx.client() as client:
        if a.as_json:
            ctx.print_json(client.get(route + _query(format="json", tolerance=a.tolerance)).json())
            return 0
        reply = client.get(route + _query(tolerance=a.tolerance))
    if a.output == "-":
        sys.stdout.buffer.write(reply.body)
        sys.stdout.buffer.flush()
        return 0
    target = Path(a.output or _attachment_name(reply.headers, a.key))
    try:
        target.write_bytes(reply.body)
    except OSError as exc:
        raise Failed(f"cannot write {target}: {exc.strerror or exc}") from None
    ctx.print(f"saved {target} ({len(reply.body):,} bytes)")
    ctx.print(_report_summary(reply.body))
    return 0


def _attachment_name(headers: Mapping[str, str], key: str) -> str:
    match = re.search(r'filename="?([^";/\\]+)"?', headers.get("content-disposition", ""))
    return match.group(1) if match else f"{key}-degradation-report.zip"


def _report_summary(data: bytes) -> str:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            summary = json.loads(zf.read("summary.json"))
    except (zipfile.BadZipFile, KeyError, ValueError):
        raise Failed("the report is not a zip with a summary.json") from None
    drifted = summary.get("drifted_features") or {}
    lines = [f"status: {summary.get('status')}"]
    for window, features in drifted.items():
        lines.append(f"drifted ({window}): {', '.join(map(str, features))}")
    lines.append(f"degraded metrics: {', '.join(summary.get('degraded_metrics') or []) or 'none'}")
    lines += [f"missing: {m}" for m in summary.get("missing") or []]
    return "\n".join(lines)


def _query(**items: object) -> str:
    return path("x", **items)[2:]  # only the "?..." part, or ""


RUNNERS: dict[str, Callable[[Context], int]] = {
    "ls": ls, "deploy": deploy, "scale": scale, "undeploy": undeploy,
    "predict": predict, "logs": logs, "report": report,
}  # fmt: skip


def run(
    args: argparse.Namespace,
    env: Mapping[str, str] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Run the client command `args.command`; failures become one line and exit code 1."""
    out, err = out or sys.stdout, err or sys.stderr
    ctx = Context(args, os.environ if env is None else env, out, err, err.isatty())
    try:
        return RUNNERS[args.command](ctx)
    except (Failed, ApiError, ClientFailure, InputError) as exc:
        message = str(exc)
        if isinstance(exc, ApiError) and exc.status == 401:
            message += "; set GATEWAY_ADMIN_TOKEN, or GATEWAY_USER and GATEWAY_PASSWORD"
        err.write(f"modelgw {args.command}: {message}\n")
        if getattr(args, "as_json", False):
            out.write(json.dumps(_error_json(exc)) + "\n")
        return 1
    except KeyboardInterrupt:
        err.write("\n")
        return 130
    except BrokenPipeError:  # `modelgw predict ... | head`: the reader left
        sys.stdout = open(os.devnull, "w")  # Python flushes stdout at exit
        return 1


def _error_json(exc: Exception) -> dict[str, Any]:
    cause = exc.api if isinstance(exc, Failed) else exc
    if isinstance(cause, ApiError):
        return {"error": cause.code, "detail": cause.detail, "status": cause.status}
    return {"error": "client_error", "detail": str(exc), "status": None}
