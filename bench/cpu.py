"""`make bench` sections `samecore` and `cpu`: what a proxied call costs the gateway.

Requests/s swing by ±15 % on a shared VM; CPU time per call does not. `cpu` measures
it from the outside: utime+stime of the proxy's process (every thread: /proc/<pid>/stat
sums them; its backends are other processes and are left out) before and after a wrk
run, divided by the calls wrk completed. Variants run interleaved, `--rounds` times,
in front of a fixed-response backend at c=16, and report the median:

- nginx as a proxy (master and worker; keep-alive upstream, access log off);
- aiohttp's floor: its low-level `web.Server` reading the body and answering a fixed
  body (a reference: what any aiohttp-based proxy pays before doing anything);
- the gateway with logging off (no inference log, no access log);
- the gateway with logging on (the defaults: inference log and JSON access log);
- the gateway with batching on (logging off): merged calls need a backend that answers
  one prediction per row, so this one is a tiny Python server (`cpu.py backend PORT`)
  instead of nginx; its CPU is left out like nginx's.

A py-spy profile of the gateway (logging off and on) under the same load follows (wrk
then on the backends' core, so the gateway has its own), its top entries printed and saved next to the results (`bench-results/cpu-profile-*.txt`,
with the folded stacks for a flame graph).

`samecore` is the production case of a gateway sharing a host with its models: the
gateway is moved onto the same core as its `mlflow models serve` backend (wrk alone on
the other) and compared with calling that backend directly, at c=64 (throughput) and
c=1 (added p50). `cpu` ends with a closing note: each target of issue 15 against what
this run measured (the batching target is read from the `batching` section if it ran).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from run import Bench, Server, Setup

REPO = Path(__file__).resolve().parent.parent
CONNECTIONS = 16
TICK = os.sysconf("SC_CLK_TCK")
FIXED = b'{"predictions": [0]}'

# Issue 15's targets: (name, what is compared, bound, "max" or "min").
TARGETS = (
    ("gateway CPU/call, logging off, vs nginx", "cpu_off_x_nginx", 6.0, "max"),
    ("gateway CPU/call, logging on, vs nginx", "cpu_on_x_nginx", 7.0, "max"),
    ("same core, c=64: gateway rps / direct rps", "samecore_c64_ratio", 0.97, "min"),
    ("same core, c=1: p50 added (ms)", "samecore_c1_p50_added_ms", 0.5, "max"),
    ("batching, c=64: batched rps / direct rps", "batching_c64_ratio", 15.0, "min"),
)


# ----------------------------------------------------------------- measuring


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes (each one's threads included), in seconds."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / TICK


def with_children(pid: int) -> list[int]:
    """`pid` and its direct children (nginx's master and its workers)."""
    pids = [pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                pids.append(int(entry.name))
    return pids


def run_wrk(
    bench: Bench, url: str, body: Path, connections: int, core: str | None = None
) -> dict[str, float]:
    """One wrk run as `Bench.wrk` makes it (on `core` if given), with the calls it completed."""
    threads = 1 if connections == 1 else 2
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(bench.duration))}s",
            "-s", str(REPO / "bench" / "post.lua"), url]  # fmt: skip
    if bench.pin:
        argv = ["taskset", "-c", core or bench.pin[1], *argv]
    out = subprocess.run(argv, env={**os.environ, "BENCH_BODY": str(body)}, capture_output=True,
                         text=True, timeout=bench.duration + 60, check=True).stdout  # fmt: skip
    calls = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return {"calls": calls, "non_2xx": int(bad.group(1)) if bad else 0, "rps": rps}


def measure(bench: Bench, pids: list[int], url: str, body: Path) -> dict[str, float]:
    """CPU µs per completed call of `pids` during one wrk run at c=CONNECTIONS."""
    before = cpu_seconds(pids)
    run = run_wrk(bench, url, body, CONNECTIONS)
    spent = cpu_seconds(pids) - before
    return {**run, "cpu_s": spent, "us_per_call": spent / max(1, run["calls"]) * 1e6}


# ------------------------------------------------------------------ variants


def _trivial_command(s: Setup) -> str:
    return json.dumps([sys.executable, str(REPO / "bench" / "trivial_backend.py"), "{port}",
                       str(s.bench.work / "trivial")])  # fmt: skip


def _counting_command() -> str:
    return json.dumps([sys.executable, str(Path(__file__).resolve()), "backend", "{port}"])


def _spawn_front(s: Setup, name: str, argv: list[str], port: int) -> Server:
    from run import wait_for

    server = s.bench.spawn(name, argv, dict(os.environ), port, front=True)
    wait_for(f"http://127.0.0.1:{port}/ping")
    return server


def variants(s: Setup) -> dict[str, tuple[list[int], str]]:
    """name -> (pids whose CPU counts, URL), every proxy in front of a fixed backend."""
    from run import KEY, MODEL, NGINX_PROXY, free_port, http

    quiet = {"GATEWAY_LOG_INPUTS": "0", "GATEWAY_LOG_LEVEL": "WARNING"}
    off = s.gateway("gw-cpu-off", GATEWAY_BACKEND_COMMAND=_trivial_command(s), **quiet)
    on = s.gateway("gw-cpu-on", GATEWAY_BACKEND_COMMAND=_trivial_command(s))
    batched = s.gateway("gw-cpu-batch", GATEWAY_BACKEND_COMMAND=_counting_command(), **quiet)
    # The same as `off`, every request through aiohttp's objects (no inference lane).
    aiohttp_only = s.gateway(
        "gw-cpu-nolane", GATEWAY_BACKEND_COMMAND=_trivial_command(s), GATEWAY_INFERENCE_LANE="0",
        **quiet,
    )  # fmt: skip
    status, answer = http(
        "POST", f"{batched.url}/deploy/{MODEL}/1?max_batch_size=64&max_batch_delay_ms=2"
    )
    if status not in (200, 201):
        raise RuntimeError(f"batching deploy failed: {status} {answer}")

    upstream = int(s.backend_url(off).split(":")[2].split("/")[0])
    port = free_port()
    conf = s.bench.work / "nginx-cpu.conf"
    conf.write_text(NGINX_PROXY.format(work=s.bench.work, upstream=upstream, port=port))
    nginx = _spawn_front(s, "nginx-cpu", [shutil.which("nginx") or "/usr/sbin/nginx", "-c",
                                          str(conf)], port)  # fmt: skip
    floor_port = free_port()
    floor = _spawn_front(s, "aiohttp-floor", [sys.executable, str(Path(__file__).resolve()),
                                              "floor", str(floor_port)], floor_port)  # fmt: skip
    return {
        "nginx": (with_children(nginx.proc.pid), f"{nginx.url}/invocations"),
        "aiohttp floor": ([floor.proc.pid], f"{floor.url}/invocations"),
        "gateway, logging off": ([off.proc.pid], f"{off.url}/{KEY}"),
        "gateway, logging on": ([on.proc.pid], f"{on.url}/{KEY}"),
        "gateway, batching on": ([batched.proc.pid], f"{batched.url}/{KEY}"),
        "gateway, lane off": ([aiohttp_only.proc.pid], f"{aiohttp_only.url}/{KEY}"),
    }


# ------------------------------------------------------------------ profile


def profile(s: Setup, name: str, pid: int, url: str) -> dict[str, Any] | None:
    """py-spy's view of `pid` under the same load: top entries, saved next to the results."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        print("   profile skipped: py-spy is not installed (pip install py-spy)")
        return None
    folded = s.bench.work / f"profile-{pid}.folded"
    seconds = max(2, round(s.bench.duration))
    spy_run = subprocess.Popen(
        [spy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "250",
         "--format", "raw", "--function", "--nonblocking", "--output", str(folded)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    time.sleep(0.5)  # py-spy attaches
    # wrk moves to the backends' core: py-spy counts a thread that waits for its core as
    # busy, so a gateway sharing one with wrk would show wrk's time in its own writes.
    run_wrk(s.bench, url, s.body["1row"], CONNECTIONS, s.bench.pin[0] if s.bench.pin else None)
    _, err = spy_run.communicate(timeout=seconds + 60)
    if spy_run.returncode != 0 or not folded.exists():
        print(f"   profile skipped: py-spy failed: {err.decode(errors='replace')[-300:]}")
        return None
    summary = summarize(folded.read_text())
    out_dir = REPO / "bench-results"
    out_dir.mkdir(exist_ok=True)
    slug = re.sub(r"[^a-z]+", "-", name.lower()).strip("-")
    shutil.copy(folded, out_dir / f"cpu-profile-{slug}.folded")
    (out_dir / f"cpu-profile-{slug}.txt").write_text(render_profile(name, summary, 40))
    print(render_profile(name, summary, 12), end="")
    return summary


def _frame_name(frame: str) -> str:
    """'handler (aiohttp/web_protocol.py:123)' -> 'handler (aiohttp/web_protocol.py)'."""
    frame = re.sub(r":\d+\)$", ")", frame)
    return re.sub(r"\(.*?(?:site-packages|lib/python3\.\d+)/", "(", frame)


def _package(frame: str) -> str:
    m = re.search(r"\((.*)\)$", frame)
    path = m.group(1) if m else ""
    if path.startswith(("gateway/", "supervisor/")) or "/gateway/" in path:
        return path.split("/")[-2] if "/" in path else path
    head = path.split("/")[0]
    return head.removesuffix(".py") or "?"


def summarize(folded: str) -> dict[str, Any]:
    """Self and inclusive shares per function, and self shares per package."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = 0
    for line in folded.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";")[1:] if not f.startswith("thread")]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        packages[_package(frames[-1])] += count
        for frame in set(frames):
            inclusive[frame] += count
    share = 100.0 / max(1, total)
    return {
        "samples": total,
        "self": [(f, n * share) for f, n in own.most_common(60)],
        "inclusive": [(f, n * share) for f, n in inclusive.most_common(60)],
        "packages": [(p, n * share) for p, n in packages.most_common(12)],
    }


def render_profile(name: str, summary: dict[str, Any], top: int) -> str:
    lines = [f"   profile of the gateway, {name} ({summary['samples']} samples, c={CONNECTIONS}):"]
    lines.append("     self time by package: " + ", ".join(
        f"{p} {v:.0f}%" for p, v in summary["packages"][:8]))  # fmt: skip
    lines.append("     top self:")
    lines += [f"       {v:5.1f}%  {f}" for f, v in summary["self"][:top]]
    lines.append("     top inclusive:")
    lines += [f"       {v:5.1f}%  {f}" for f, v in summary["inclusive"][:top]]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ sections


def section_cpu(s: Setup) -> None:
    print(f"\n== CPU per proxied call (µs, the proxy's process, all threads; c={CONNECTIONS},"
          " fixed-response backend)")  # fmt: skip
    measured = variants(s)
    body = s.body["1row"]
    for _pids, url in measured.values():  # warm every path: connections, caches
        run_wrk_short(s.bench, url, body)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in measured}
    for _ in range(s.bench.rounds):
        for name, (pids, url) in measured.items():
            runs[name].append(measure(s.bench, pids, url, body))
    nginx = statistics.median(r["us_per_call"] for r in runs["nginx"])
    rows = {}
    for name, done in runs.items():
        us = statistics.median(r["us_per_call"] for r in done)
        rps = statistics.median(r["rps"] for r in done)
        errors = sum(r["non_2xx"] for r in done)
        rows[name] = {"us_per_call": us, "x_nginx": us / nginx, "rps": rps, "non_2xx": errors,
                      "all_us": [round(r["us_per_call"], 1) for r in done]}  # fmt: skip
        print(f"   {name:<24} {us:7.1f} µs/call  x{us / nginx:5.2f} nginx   {rps:8.0f} rps"
              + (f"  non-2xx {errors}" if errors else ""))  # fmt: skip
    s.bench.results.append({"scenario": "cpu per call", "connections": CONNECTIONS, **rows})
    summaries = {}
    for name in ("gateway, logging off", "gateway, logging on"):
        pids, url = measured[name]
        summaries[name] = profile(s, name, pids[0], url)
    closing_note(s, rows, summaries)


def run_wrk_short(bench: Bench, url: str, body: Path) -> None:
    duration, bench.duration = bench.duration, 1.0
    try:
        run_wrk(bench, url, body, CONNECTIONS)
    finally:
        bench.duration = duration


def section_samecore(s: Setup) -> None:
    print("\n== the gateway on the same core as its `mlflow models serve` backend (wrk apart)")
    from run import KEY

    if not s.bench.pin:
        print("   skipped: needs taskset and at least 2 cores")
        return
    gw = s.classic
    direct = s.backend_url(gw)
    _pin(gw, s.bench.pin[0])
    try:
        for c in (64, 1):
            s.bench.compare("direct vs gateway, same core", ("direct", direct),
                            ("gateway", f"{gw.url}/{KEY}"), s.body["1row"], c)  # fmt: skip
    finally:
        s.bench.repin_front(gw)


def _pin(server: Server, cores: str) -> None:
    subprocess.run(["taskset", "-a", "-p", "-c", cores, str(server.proc.pid)], check=True,
                   capture_output=True)  # fmt: skip


def _figures(s: Setup, rows: dict[str, Any]) -> dict[str, float | None]:
    figures: dict[str, float | None] = {
        "cpu_off_x_nginx": rows["gateway, logging off"]["x_nginx"],
        "cpu_on_x_nginx": rows["gateway, logging on"]["x_nginx"],
        "samecore_c64_ratio": None,
        "samecore_c1_p50_added_ms": None,
        "batching_c64_ratio": None,
    }
    for row in s.bench.results:
        scenario, c = row.get("scenario"), row.get("connections")
        if scenario == "direct vs gateway, same core" and c == 64:
            figures["samecore_c64_ratio"] = row["rps_ratio"]
        elif scenario == "direct vs gateway, same core" and c == 1:
            figures["samecore_c1_p50_added_ms"] = row["p50_added_ms"]
        elif scenario == "direct vs gateway+batching" and c == 64:
            figures["batching_c64_ratio"] = row["rps_ratio"]
    return figures


def closing_note(
    s: Setup, rows: dict[str, Any], summaries: dict[str, dict[str, Any] | None]
) -> None:
    figures = _figures(s, rows)
    print("\n== closing note: issue 15's targets against this run")
    verdicts = []
    for title, key, bound, kind in TARGETS:
        value = figures[key]
        if value is None:
            verdict = "not measured (run its section: samecore, batching)"
        else:
            met = value <= bound if kind == "max" else value >= bound
            sign = "<=" if kind == "max" else ">="
            verdict = f"{value:.2f} (target {sign} {bound:g}): {'met' if met else 'NOT met'}"
        verdicts.append({"target": title, "value": value, "bound": bound, "kind": kind})
        print(f"   {title:<44} {verdict}")
    floor = rows["aiohttp floor"]["x_nginx"]
    print(f"   (aiohttp's own floor here: x{floor:.2f} nginx)")
    for name, summary in summaries.items():
        if summary:
            spread = ", ".join(f"{p} {v:.0f}%" for p, v in summary["packages"][:6])
            print(f"   where the time goes, {name}: {spread}")
    s.bench.results.append({"scenario": "issue 15 targets", "targets": verdicts})


# --------------------------------------------------- helper servers (subprocesses)


def _predictions(body: bytes) -> bytes:
    """One prediction per row of an MLflow scoring body (1 for anything else)."""
    try:
        data = json.loads(body) if body else None
    except ValueError:
        data = None
    rows = 1
    if isinstance(data, dict) and len(data) == 1:
        ((kind, value),) = data.items()
        if kind == "dataframe_split" and isinstance(value, dict):
            rows = len(value.get("data") or [0])
        elif isinstance(value, list):
            rows = len(value)
    return json.dumps({"predictions": [0] * rows}).encode()


class _CountingBackend(asyncio.Protocol):
    """A bare uvloop + httptools scoring backend: one prediction per row, keep-alive."""

    def __init__(self) -> None:
        import httptools

        self.parser = httptools.HttpRequestParser(self)
        self.body: list[bytes] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        answer = _predictions(b"".join(self.body))
        self.body = []
        assert self.transport is not None
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(answer), answer))  # fmt: skip


def _serve_forever(start: Any) -> None:
    import uvloop

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    loop.run_until_complete(start(loop))
    loop.run_forever()


def render(data: dict[str, Any]) -> str:
    """The `cpu` section and the closing note of a results file, as Markdown tables."""
    lines = []
    for row in data["results"]:
        if row.get("scenario") == "cpu per call":
            lines += [f"| Proxy (c={row['connections']}, fixed-response backend) | CPU µs per call "
                      "| x nginx | requests/s |", "|---|---|---|---|"]  # fmt: skip
            for name, figures in row.items():
                if isinstance(figures, dict):
                    lines.append(f"| {name} | {figures['us_per_call']:.1f} | "
                                 f"**{figures['x_nginx']:.2f}x** | {figures['rps']:,.0f} |")  # fmt: skip
        if row.get("scenario") == "issue 15 targets":
            lines += ["", "| Target | this run | bound | met |", "|---|---|---|---|"]
            for target in row["targets"]:
                value, sign = target["value"], "<=" if target["kind"] == "max" else ">="
                met = (
                    "not run" if value is None
                    else "yes" if (value <= target["bound"] if target["kind"] == "max"
                                   else value >= target["bound"])
                    else "**no**"
                )  # fmt: skip
                shown = "-" if value is None else f"{value:.2f}"
                lines.append(
                    f"| {target['target']} | {shown} | {sign} {target['bound']:g} | {met} |"
                )
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    """`cpu.py backend PORT` (the counting backend), `cpu.py floor PORT` (aiohttp's floor),
    or `cpu.py render RESULTS.json` (this section's tables in Markdown)."""
    if argv[0] == "render":
        print(render(json.loads(Path(argv[1]).read_text())))
        return
    kind, port = argv[0], int(argv[1])
    if kind == "backend":

        async def start(loop: asyncio.AbstractEventLoop) -> None:
            await loop.create_server(_CountingBackend, "127.0.0.1", port)

    elif kind == "floor":
        from aiohttp import web

        async def handler(request: web.BaseRequest) -> web.Response:
            await request.read()
            return web.Response(body=FIXED, content_type="application/json")

        async def start(loop: asyncio.AbstractEventLoop) -> None:
            await loop.create_server(web.Server(handler), "127.0.0.1", port)

    else:
        raise SystemExit(f"usage: cpu.py backend|floor PORT (not {kind!r})")
    _serve_forever(start)


if __name__ == "__main__":
    main(sys.argv[1:])
