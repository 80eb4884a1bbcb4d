"""Render bench-results/latest.json as the Markdown table the README shows.

usage: python bench/render.py [bench-results/latest.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _fmt_side(side: dict[str, float]) -> str:
    return f"{side['rps']:,.0f} rps, p50 {side['p50_ms']:.2f} ms, p99 {side['p99_ms']:.1f} ms"


def render(data: dict[str, Any]) -> str:
    m = data["machine"]
    lines = [
        f"Machine: {m['platform']}, {m['cores']} cores, Python {m['python']}; "
        f"wrk runs of {m['duration_s']:g} s, {m['rounds']} interleaved rounds (medians); "
        f"pinning: {m.get('pin_mode', 'backend')} (cores {m['pinning']}).",
        "",
        "| Scenario | c | body | A | B | B/A rps | p50 added |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in data["results"]:
        if "labels" not in row:
            continue
        a, b = row["labels"]
        lines.append(
            f"| {row['scenario']} | {row['connections']} | {row['body']} | {a}: {_fmt_side(row[a])} "
            f"| {b}: {_fmt_side(row[b])} | **{row['rps_ratio']:.2f}x** | {row['p50_added_ms']:+.2f} ms |"
        )
    for row in data["results"]:
        if row.get("scenario") == "deploy cost":
            lean, mlflow = row["lean"], row["mlflow"]
            lines += [
                "",
                "| Launcher | deploy to ready | resident memory |",
                "|---|---|---|",
                f"| `mlflow models serve` | {mlflow['deploy_seconds']:.2f} s | {mlflow['rss_mb']:.0f} MB |",
                f"| lean (default) | {lean['deploy_seconds']:.2f} s "
                f"(**{lean['deploy_seconds'] / mlflow['deploy_seconds']:.2f}x**) | {lean['rss_mb']:.0f} MB "
                f"(**{lean['rss_mb'] / mlflow['rss_mb']:.2f}x**) |",
            ]
    return "\n".join(lines)


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "bench-results/latest.json")
    print(render(json.loads(path.read_text())))
