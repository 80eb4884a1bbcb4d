"""The soak's figures as text: the table `make soak` prints, and the README's.

`python -m bench.soak_report [bench-results/soak.json]` prints the Markdown
table the README's Soak section holds, from a saved report.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _causes(by_cause: dict[str, int]) -> str:
    return ", ".join(f"{n} {cause}" for cause, n in by_cause.items()) or "0"


def _fault(window: dict[str, Any]) -> str:
    """The one figure that says how the gateway took the fault."""
    a = window.get("action", {})
    if "error" in a or "skipped" in a:
        return str(a.get("error") or a.get("skipped"))
    picks = {
        "backend_kill9": ("replica back after {replica_back_after_s} s",),
        "backend_sigstop": ("replaced after {replica_replaced_after_s} s",),
        "store_lock": ("spooled {log_spooled}, replayed {log_replayed}, lost {log_lost}",),
        "disk_full": ("spooled {log_spooled}, not journaled {log_unjournaled},"
                      " lost {log_lost} (counted)",),
        "replace_scale": ("replace {replace[status]} in {replace[seconds]} s, "
                          "scale {scale_to_3[status]}/{scale_to_2[status]}",),
        "slowloris": ("{closed_by_gateway}/{sockets} closed by the gateway, median {median_s_to_close} s",),
        "idle_flood": ("{accepted} accepted, {closed_by_gateway} closed by the gateway, "
                       "median {median_s_to_close} s",),
        "gateway_kill9": ("answering {answering_health_after_restart_s} s after restart, "
                          "running {deployment_running_after_restart_s} s",),
    }  # fmt: skip
    try:
        return " ".join(text.format(**a) for text in picks.get(window["name"], ()))
    except (KeyError, IndexError, TypeError):
        return json.dumps(a)[:120]


def rows(report: dict[str, Any]) -> list[list[str]]:
    out = []
    for w in report.get("windows", []):
        out.append([
            w["name"], f"{w['end_s'] - w['start_s']:.0f}", str(w.get("requests", "")),
            _causes(w.get("by_cause", {})), str(w.get("longest_without_2xx_s", "")),
            f"{_ms(w.get('p50_ms'))} / {_ms(w.get('p99_ms'))}",
            str(w.get("missing_from_log", "")), _fault(w),
        ])  # fmt: skip
    return out


HEADER = [
    "window",
    "s",
    "calls",
    "non-2xx by cause",
    "longest without 2xx, s",
    "p50 / p99 ms",
    "2xx missing from log",
    "the fault",
]


def _summary(report: dict[str, Any]) -> list[str]:
    log, totals = report.get("log", {}), report.get("totals", {})
    res, left = report.get("resources", {}), report.get("leftovers", {})
    start, before = res.get("gateway_start", {}), res.get("gateway_before_kill", {})
    after, end = res.get("gateway_after_restart", {}), res.get("gateway_end", {})
    idle = res.get("gateway_after_load", {})
    lines = [
        f"calls {totals.get('requests')}, 2xx {totals.get('ok')}, non-2xx {totals.get('non_2xx')}"
        f" ({_causes(totals.get('by_cause', {}))})",
        f"answered 2xx missing from the log: {log.get('missing')} (counted lost by the gateway:"
        f" {log.get('counted_lost_by_gateway')}; missing and not counted:"
        f" {log.get('missing_not_counted')}); logged twice: {log.get('logged_twice')}",
        f"gateway RSS / open files under load: {start.get('rss_mb')} MB / {start.get('fds')} after"
        f" the first window -> {before.get('rss_mb')} MB / {before.get('fds')} before its kill -9;"
        f" restarted: {after.get('rss_mb')} MB / {after.get('fds')} -> {end.get('rss_mb')} MB /"
        f" {end.get('fds')} at the end ({idle.get('rss_mb')} MB / {idle.get('fds')} once the load"
        " stopped)",
        f"left after the final stop: {len(left.get('processes', []))} processes"
        f" {[p['cmd'][:60] for p in left.get('processes', [])]}, listening ports"
        f" {left.get('listening_ports')} (of {left.get('backend_pids_seen')} backend pids seen);"
        f" journal segments with calls {left.get('journal_segments_left', {})}, spool files"
        f" {left.get('spool_files_left', 0)}",
    ]
    kill = report.get("at_gateway_kill")
    if kill:
        lines.append(
            f"gateway kill -9: {kill['answered_2xx_in_the_second_before']} calls answered 2xx in"
            f" the second before it, {kill['of_those_missing_from_log']} of them missing from the log"
        )
    lines.extend(f"skipped: {s}" for s in report.get("skipped", []))
    return lines


def print_report(report: dict[str, Any]) -> None:
    table = [HEADER, *rows(report)]
    widths = [min(60, max(len(r[i]) for r in table)) for i in range(len(HEADER))]
    print()
    for row in table:
        print("  ".join(cell[:60].ljust(widths[i]) for i, cell in enumerate(row)))
    print()
    for line in _summary(report):
        print(line)


def markdown(report: dict[str, Any]) -> str:
    machine = report.get("machine", {})
    head = (f"{report.get('date')}, commit {report.get('commit')}, {machine.get('cores')} cores"
            f" ({machine.get('platform')}), {report.get('minutes')} min of load at"
            f" c={report.get('concurrency')}, {report.get('wall_s')} s in all.\n")  # fmt: skip
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += [
        "| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows(report)
    ]
    return head + "\n" + "\n".join(lines) + "\n\n" + "\n".join(f"- {s}" for s in _summary(report))


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "bench-results/soak.json")
    print(markdown(json.loads(path.read_text())))
