"""`make bench`: how much the gateway costs and how far it goes, measured with wrk.

One run trains and registers the demo model in a temporary MLflow registry,
starts three gateways (lean backends with input logging on; lean backends with
logging off; `mlflow models serve` backends) plus a trivial nginx backend and an
nginx proxy, then measures, interleaving A and B runs so the machine's drift
cancels out:

- the backend called directly vs through the gateway, concurrency 1/16/64,
  1-row and 100-row bodies (the backend: plain `mlflow models serve`);
- gateway vs nginx in front of a trivial fixed-response backend (raw capacity);
- input logging on vs off; batching on vs off; 1 vs 2 replicas;
- deploy-to-ready seconds and resident memory per deployment, lean vs
  `mlflow models serve`, and the two backends' own requests/s.

Pinning: with `taskset` available and at least 2 cores, wrk runs on the last
core and every server on the others, so load generation never steals CPU from
what is measured; both sides of each ratio get the same cores.
Results print as a table and are written to bench-results/latest.json.
Nothing here is a test: no threshold fails the run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MODEL = "bench-wine"


# ---------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: bytes | None = None, timeout: float = 300) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=body, method=method,
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            data = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        data, status = exc.read(), exc.code
    try:
        return status, json.loads(data)
    except ValueError:
        return status, data


def wait_for(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if http("GET", url, timeout=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def cpus() -> tuple[str, str] | None:
    """(server cores, load-generator core) for taskset, or None without pinning."""
    n = os.cpu_count() or 1
    if n < 2 or not shutil.which("taskset"):
        return None
    return (f"0-{n - 2}" if n > 2 else "0"), str(n - 1)


def group_rss_mb(pgid: int) -> float:
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[2]) != pgid:
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1024


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Bench:
    work: Path
    duration: float
    rounds: int
    pin: tuple[str, str] | None
    servers: list[Server] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)

    def spawn(self, name: str, argv: list[str], env: dict[str, str], port: int) -> Server:
        if self.pin:
            argv = ["taskset", "-c", self.pin[0], *argv]
        log = open(self.work / f"{name}.log", "wb")
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
        server = Server(name, proc, port)
        self.servers.append(server)
        return server

    def gateway(self, name: str, tracking_uri: str, **extra: str) -> Server:
        port = free_port()
        start = 20000 + len(self.servers) * 20
        env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "GATEWAY_PORT": str(port),
               "START_PORT": str(start), "END_PORT": str(start + 9),
               "GATEWAY_DATA_DIR": str(self.work / name), "GATEWAY_LOG_LEVEL": "WARNING",
               **extra}  # fmt: skip
        server = self.spawn(name, [sys.executable, "-m", "gateway", "serve"], env, port)
        # The access log is one JSON line per request on stdout: keep it, like production.
        wait_for(f"{server.url}/health")
        return server

    def stop_all(self) -> None:
        for server in reversed(self.servers):
            if server.proc.poll() is None:
                os.killpg(server.proc.pid, signal.SIGTERM)
        for server in self.servers:
            try:
                server.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(server.proc.pid, signal.SIGKILL)

    # -------------------------------------------------------------- wrk

    def wrk(self, url: str, body: Path, connections: int) -> dict[str, float]:
        threads = 1 if connections == 1 else 2
        argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(self.duration))}s", "--latency",
                "-s", str(REPO / "bench" / "post.lua"), url]  # fmt: skip
        if self.pin:
            argv = ["taskset", "-c", self.pin[1], *argv]
        out = subprocess.run(argv, env={**os.environ, "BENCH_BODY": str(body)},
                             capture_output=True, text=True, timeout=self.duration + 60,
                             check=True).stdout  # fmt: skip
        return parse_wrk(out)

    def compare(self, name: str, a: tuple[str, str], b: tuple[str, str], body: Path,
                connections: int) -> dict[str, Any]:  # fmt: skip
        """Interleave A and B `rounds` times; keep the median of each."""
        runs: dict[str, list[dict[str, float]]] = {a[0]: [], b[0]: []}
        for _ in range(self.rounds):
            for label, url in (a, b):
                runs[label].append(self.wrk(url, body, connections))
        row: dict[str, Any] = {"scenario": name, "connections": connections, "body": body.stem}
        for label in (a[0], b[0]):
            row[label] = {k: statistics.median(r[k] for r in runs[label]) for k in runs[label][0]}
        ra, rb = row[a[0]], row[b[0]]
        row["rps_ratio"] = rb["rps"] / ra["rps"] if ra["rps"] else None
        row["p50_added_ms"] = rb["p50_ms"] - ra["p50_ms"]
        row["labels"] = [a[0], b[0]]
        self.results.append(row)
        print(format_row(row), flush=True)
        return row


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not m:
        return float("nan")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(out: str) -> dict[str, float]:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {"rps": rps, "p50_ms": p50, "p99_ms": p99,
            "non_2xx": float(bad.group(1)) if bad else 0.0,
            "socket_errors": float(sum(int(g) for g in errors.groups())) if errors else 0.0}  # fmt: skip


def format_row(row: dict[str, Any]) -> str:
    a, b = row["labels"]
    ra, rb = row[a], row[b]
    return (f"{row['scenario']:<34} c={row['connections']:<3} {row['body']:<7} "
            f"{a}: {ra['rps']:8.0f} rps p50 {ra['p50_ms']:6.2f} p99 {ra['p99_ms']:7.2f} | "
            f"{b}: {rb['rps']:8.0f} rps p50 {rb['p50_ms']:6.2f} p99 {rb['p99_ms']:7.2f} | "
            f"x{row['rps_ratio']:.2f}  +{row['p50_added_ms']:.2f} ms p50"
            + (f"  errors {rb['non_2xx'] + rb['socket_errors']:.0f}" if rb['non_2xx'] + rb['socket_errors'] else ""))  # fmt: skip


def bodies(work: Path) -> dict[str, Path]:
    from sklearn.datasets import load_wine

    data = load_wine(as_frame=True).data.rename(columns=lambda c: c.replace("/", "_"))
    out = {}
    for rows in (1, 100):
        sample = data.sample(rows, random_state=0, replace=rows > len(data))
        path = work / f"{rows}row.json"
        path.write_text(
            json.dumps({"dataframe_split": json.loads(sample.to_json(orient="split", index=False))})
        )
        out[f"{rows}row"] = path
    return out


def deploy(gw: Server, version: str, query: str = "") -> tuple[float, dict[str, Any]]:
    started = time.monotonic()
    status, body = http("POST", f"{gw.url}/deploy/{MODEL}/{version}{query}")
    if status not in (200, 201):
        raise RuntimeError(f"deploy on {gw.name} failed: {status} {body}")
    return time.monotonic() - started, body


def deploy_cost(gw: Server, version: str, cycles: int) -> dict[str, float]:
    times, memory = [], []
    for _ in range(cycles):
        seconds, _ = deploy(gw, version)
        pid = http("GET", f"{gw.url}/get_deployed_models")[1][f"{MODEL}-{version}"]["pid"]
        time.sleep(1.0)  # let the server settle after its first answer
        memory.append(group_rss_mb(pid))
        times.append(seconds)
        http("POST", f"{gw.url}/undeploy/{MODEL}-{version}")
    return {"deploy_seconds": statistics.median(times), "rss_mb": statistics.median(memory),
            "deploy_seconds_all": times, "rss_mb_all": memory}  # fmt: skip


# --------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved A/B rounds")
    parser.add_argument("--quick", action="store_true", help="only the core comparisons")
    parser.add_argument("--out", type=Path, default=REPO / "bench-results" / "latest.json")
    args = parser.parse_args()
    for tool in ("wrk", "nginx"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            print(
                f"{tool} is missing: install it with `apt-get install wrk nginx`", file=sys.stderr
            )
            return 2

    work = Path(tempfile.mkdtemp(prefix="modelgw-bench-"))
    bench = Bench(work, args.duration, args.rounds, cpus())
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} cores, python {platform.python_version()}"
    )
    print(
        f"pinning: {'servers on cores ' + bench.pin[0] + ', wrk on core ' + bench.pin[1] if bench.pin else 'none'}"
    )
    try:
        from gateway.demo import train_and_register

        uri = f"sqlite:///{work / 'mlflow.db'}"
        train_and_register(uri, MODEL, artifact_location=work / "artifacts", reuse=False)
        train_and_register(uri, MODEL, artifact_location=work / "artifacts", reuse=False)
        body = bodies(work)

        lean = bench.gateway("gw-lean", uri)
        nolog = bench.gateway("gw-nolog", uri, GATEWAY_LOG_INPUTS="0")
        classic = bench.gateway("gw-mlflow", uri, GATEWAY_LAUNCHER="mlflow", GATEWAY_LOG_INPUTS="0")
        for gw in (lean, nolog, classic):
            deploy(gw, "1")
        key = f"{MODEL}-1"
        models = {
            gw.name: http("GET", f"{gw.url}/get_deployed_models")[1][key]
            for gw in (lean, nolog, classic)
        }
        direct_mlflow = f"http://127.0.0.1:{models['gw-mlflow']['port']}/invocations"
        direct_lean = f"http://127.0.0.1:{models['gw-lean']['port']}/invocations"

        print("\n== the gateway vs calling `mlflow models serve` directly (same backend)")
        for rows in ("1row", "100row"):
            for c in (1, 16, 64):
                bench.compare("direct vs gateway", ("direct", direct_mlflow),
                              ("gateway", f"{classic.url}/{key}"), body[rows], c)  # fmt: skip

        print("\n== raw proxy capacity: nginx vs the gateway in front of a trivial backend")
        trivial_cmd = json.dumps(
            [
                sys.executable,
                str(REPO / "bench" / "trivial_backend.py"),
                "{port}",
                str(work / "trivial"),
            ]
        )
        trivial_gw = bench.gateway(
            "gw-trivial", uri, GATEWAY_BACKEND_COMMAND=trivial_cmd, GATEWAY_LOG_INPUTS="0"
        )
        deploy(trivial_gw, "1")
        trivial_port = http("GET", f"{trivial_gw.url}/get_deployed_models")[1][key]["port"]
        nginx_port = free_port()
        nginx_conf = work / "nginx-proxy.conf"
        nginx_conf.write_text(NGINX_PROXY.format(work=work, upstream=trivial_port, port=nginx_port))
        bench.spawn(
            "nginx-proxy",
            [shutil.which("nginx") or "/usr/sbin/nginx", "-c", str(nginx_conf)],
            dict(os.environ),
            nginx_port,
        )
        wait_for(f"http://127.0.0.1:{nginx_port}/ping")
        for c in (16, 64):
            bench.compare("nginx vs gateway (trivial backend)", ("nginx", f"http://127.0.0.1:{nginx_port}/invocations"),
                          ("gateway", f"{trivial_gw.url}/{key}"), body["1row"], c)  # fmt: skip
        bench.compare("trivial backend direct vs nginx", ("direct", f"http://127.0.0.1:{trivial_port}/invocations"),
                      ("nginx", f"http://127.0.0.1:{nginx_port}/invocations"), body["1row"], 64)  # fmt: skip

        print("\n== input logging off vs on (both through a gateway, lean backends)")
        for c in (16, 64):
            bench.compare(
                "logging off vs on",
                ("off", f"{nolog.url}/{key}"),
                ("on", f"{lean.url}/{key}"),
                body["1row"],
                c,
            )

        if not args.quick:
            print("\n== lean backend vs `mlflow models serve`, called directly")
            for c in (1, 16):
                bench.compare(
                    "mlflow serve vs lean backend",
                    ("mlflow", direct_mlflow),
                    ("lean", direct_lean),
                    body["1row"],
                    c,
                )

            print(
                "\n== batching off vs on (1-row calls; direct `mlflow models serve` for reference)"
            )
            for c in (1, 64):
                http("POST", f"{classic.url}/deploy/{MODEL}/1?max_batch_size=1")
                off = bench.wrk(f"{classic.url}/{key}", body["1row"], c)
                http(
                    "POST", f"{classic.url}/deploy/{MODEL}/1?max_batch_size=64&max_batch_delay_ms=2"
                )
                bench.compare(
                    "direct vs gateway+batching",
                    ("direct", direct_mlflow),
                    ("batched", f"{classic.url}/{key}"),
                    body["1row"],
                    c,
                )
                bench.results[-1]["gateway_unbatched"] = off
            http("POST", f"{classic.url}/deploy/{MODEL}/1?max_batch_size=1")

            print("\n== 1 vs 2 replicas (through the gateway, lean backends)")
            http("POST", f"{nolog.url}/scale/{key}?replicas=1")
            one = bench.wrk(f"{nolog.url}/{key}", body["1row"], 64)
            http("POST", f"{nolog.url}/scale/{key}?replicas=2")
            row = bench.compare(
                "1 vs 2 replicas",
                ("direct-1", direct_lean),
                ("2 replicas", f"{nolog.url}/{key}"),
                body["1row"],
                64,
            )
            row["gateway_1_replica"] = one
            print(
                f"   gateway with 1 replica: {one['rps']:.0f} rps; with 2: {row['2 replicas']['rps']:.0f} rps"
                f" (x{row['2 replicas']['rps'] / one['rps']:.2f})"
            )

            print("\n== deploy-to-ready and memory per deployment (median of 3)")
            costs = {"lean": deploy_cost(lean, "2", 3), "mlflow": deploy_cost(classic, "2", 3)}
            for name, cost in costs.items():
                print(
                    f"   {name:<7} ready in {cost['deploy_seconds']:.2f} s, {cost['rss_mb']:.0f} MB resident"
                )
            print(
                f"   lean/mlflow: time x{costs['lean']['deploy_seconds'] / costs['mlflow']['deploy_seconds']:.2f},"
                f" memory x{costs['lean']['rss_mb'] / costs['mlflow']['rss_mb']:.2f}"
            )
            bench.results.append({"scenario": "deploy cost", **{k: v for k, v in costs.items()}})
    finally:
        bench.stop_all()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "machine": {
                    "platform": platform.platform(),
                    "cores": os.cpu_count(),
                    "python": platform.python_version(),
                    "pinning": bench.pin,
                    "duration_s": args.duration,
                    "rounds": args.rounds,
                },
                "results": bench.results,
            },
            indent=2,
        )
    )
    print(f"\nresults: {args.out}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


NGINX_PROXY = """
worker_processes 1;
daemon off;
pid {work}/nginx-proxy.pid;
error_log stderr warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {work}/np-body;
    proxy_temp_path {work}/np-proxy;
    fastcgi_temp_path {work}/np-fastcgi;
    uwsgi_temp_path {work}/np-uwsgi;
    scgi_temp_path {work}/np-scgi;
    upstream backend {{ server 127.0.0.1:{upstream}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""

if __name__ == "__main__":
    raise SystemExit(main())
