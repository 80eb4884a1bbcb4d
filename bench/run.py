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
  `mlflow models serve`, and the two backends' own requests/s;
- Open Inference Protocol (V2) infer vs `/invocations`, both through the gateway, with
  the real model and in front of the trivial backend;
- traffic management (bench/traffic.py): the latency of admitted calls and the share shed
  under an overload with shedding off vs on, and a wake-up from idle vs a fresh deploy;
- CPU µs per proxied call (the proxy's process from /proc): nginx, aiohttp's floor, the
  gateway with logging off/on and with batching, plus a py-spy profile; and the gateway on
  its backend's core vs direct (bench/cpu.py, sections `cpu` and `samecore`);
- Ray placement across two network namespaces (root and iproute2): through the gateway on
  host A to a backend on host B vs calling that backend directly from A, deploy-to-ready
  on Ray vs local, and the resident memory Ray adds per node.

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

from cpu import section_cpu, section_samecore
from traffic import section_overload, section_wake

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
    pin_mode: str = "backend"
    servers: list[Server] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)
    wrk_prefix: list[str] = field(default_factory=list)  # e.g. run wrk on another host

    def spawn(
        self, name: str, argv: list[str], env: dict[str, str], port: int, front: bool = False
    ) -> Server:
        """Start a server; `front` ones (proxies) share the load generator's core in
        `backend` pinning, so the model backends keep theirs."""
        if self.pin:
            core = self.pin[1] if front and self.pin_mode == "backend" else self.pin[0]
            argv = ["taskset", "-c", core, *argv]
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
               "GATEWAY_DATA_DIR": str(self.work / name), **extra}  # fmt: skip
        # The gateway starts on the backends' cores, so the backends it spawns inherit
        # them; `repin_front` then moves the gateway itself (see `main`).
        server = self.spawn(name, [sys.executable, "-m", "gateway", "serve"], env, port)
        wait_for(f"{server.url}/health")
        return server

    def repin_front(self, server: Server) -> None:
        """Move a gateway (every thread) to the load generator's core; its backends stay."""
        if self.pin and self.pin_mode == "backend":
            subprocess.run(["taskset", "-a", "-p", "-c", self.pin[1], str(server.proc.pid)],
                           check=True, capture_output=True)  # fmt: skip

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
        argv = [*self.wrk_prefix, *argv]
        out = subprocess.run(argv, env={**os.environ, "BENCH_BODY": str(body)},
                             capture_output=True, text=True, timeout=self.duration + 60,
                             check=True).stdout  # fmt: skip
        return parse_wrk(out)

    def compare(self, name: str, a: tuple[str, str], b: tuple[str, str], body: Path,
                connections: int, body_b: Path | None = None) -> dict[str, Any]:  # fmt: skip
        """Interleave A and B `rounds` times; keep the median of each (B may post `body_b`)."""
        runs: dict[str, list[dict[str, float]]] = {a[0]: [], b[0]: []}
        for _ in range(self.rounds):
            for (label, url), sent in ((a, body), (b, body_b or body)):
                runs[label].append(self.wrk(url, sent, connections))
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
    parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"comma-separated sections: {', '.join(SECTIONS)}",
    )
    parser.add_argument(
        "--pin",
        choices=("backend", "split", "none"),
        default="backend",
        help="backend (default): model backends on their own cores, wrk, the gateway and nginx "
        "on the last one, so a backend has the same CPU whether called directly or through a proxy; "
        "split: wrk alone on the last core, every server on the others; none: no pinning",
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench-results" / "latest.json")
    args = parser.parse_args()
    sections = [s for s in args.only.split(",") if s]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    for tool in ("wrk", "nginx"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            print(
                f"{tool} is missing: install it with `apt-get install wrk nginx`", file=sys.stderr
            )
            return 2

    work = Path(tempfile.mkdtemp(prefix="modelgw-bench-"))
    bench = Bench(
        work, args.duration, args.rounds, cpus() if args.pin != "none" else None, args.pin
    )
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} cores, python {platform.python_version()}"
    )
    print(
        f"pinning ({args.pin}): "
        + (
            "none"
            if not bench.pin
            else f"model backends on cores {bench.pin[0]}; wrk, gateways and nginx on core {bench.pin[1]}"
            if args.pin == "backend"
            else f"wrk on core {bench.pin[1]}; every server on cores {bench.pin[0]}"
        )
    )
    try:
        from gateway.deploy.demo import train_and_register

        uri = f"sqlite:///{work / 'mlflow.db'}"
        train_and_register(uri, MODEL, artifact_location=work / "artifacts", reuse=False)
        train_and_register(uri, MODEL, artifact_location=work / "artifacts", reuse=False)
        setup = Setup(bench, uri, bodies(work))
        for section in sections:
            SECTIONS[section](setup)
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
                    "pin_mode": args.pin,
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


KEY = f"{MODEL}-1"


class Setup:
    """Servers started on first use, shared by the sections."""

    def __init__(self, bench: Bench, uri: str, body: dict[str, Path]) -> None:
        self.bench, self.uri, self.body = bench, uri, body
        self._gateways: dict[str, Server] = {}

    def gateway(self, name: str, **env: str) -> Server:
        if name not in self._gateways:
            gw = self.bench.gateway(name, self.uri, **env)
            deploy(gw, "1")
            self.bench.repin_front(gw)
            self._gateways[name] = gw
        return self._gateways[name]

    def backend_url(self, gw: Server) -> str:
        port = http("GET", f"{gw.url}/get_deployed_models")[1][KEY]["port"]
        return f"http://127.0.0.1:{port}/invocations"

    @property
    def lean(self) -> Server:  # lean backends, input logging on (the defaults)
        return self.gateway("gw-lean")

    @property
    def nolog(self) -> Server:
        return self.gateway("gw-nolog", GATEWAY_LOG_INPUTS="0")

    @property
    def classic(self) -> Server:  # `mlflow models serve` backends
        return self.gateway("gw-mlflow", GATEWAY_LAUNCHER="mlflow", GATEWAY_LOG_INPUTS="0")

    @property
    def trivial(self) -> Server:  # a fixed-answer nginx backend: what is left is the gateway
        command = json.dumps([sys.executable, str(REPO / "bench" / "trivial_backend.py"), "{port}",
                              str(self.bench.work / "trivial")])  # fmt: skip
        # Access logs off on both sides (nginx: access_log off) for raw capacity.
        return self.gateway("gw-trivial", GATEWAY_BACKEND_COMMAND=command,
                            GATEWAY_LOG_INPUTS="0", GATEWAY_LOG_LEVEL="WARNING")  # fmt: skip


def section_direct(s: Setup) -> None:
    print("\n== the gateway vs calling `mlflow models serve` directly (same backend)")
    direct = s.backend_url(s.classic)
    for rows in ("1row", "100row"):
        for c in (1, 16, 64):
            s.bench.compare(
                "direct vs gateway",
                ("direct", direct),
                ("gateway", f"{s.classic.url}/{KEY}"),
                s.body[rows],
                c,
            )


def section_trivial(s: Setup) -> None:
    print("\n== raw proxy capacity: nginx vs the gateway in front of a trivial backend")
    work = s.bench.work
    gw = s.trivial
    backend = s.backend_url(gw)
    upstream = int(backend.split(":")[2].split("/")[0])
    port = free_port()
    conf = work / "nginx-proxy.conf"
    conf.write_text(NGINX_PROXY.format(work=work, upstream=upstream, port=port))
    s.bench.spawn(
        "nginx-proxy",
        [shutil.which("nginx") or "/usr/sbin/nginx", "-c", str(conf)],
        dict(os.environ),
        port,
        front=True,
    )
    wait_for(f"http://127.0.0.1:{port}/ping")
    nginx = f"http://127.0.0.1:{port}/invocations"
    for c in (16, 64):
        s.bench.compare(
            "nginx vs gateway (trivial backend)",
            ("nginx", nginx),
            ("gateway", f"{gw.url}/{KEY}"),
            s.body["1row"],
            c,
        )
    s.bench.compare(
        "trivial backend direct vs nginx", ("direct", backend), ("nginx", nginx), s.body["1row"], 64
    )


def section_logging(s: Setup) -> None:
    print("\n== input logging off vs on (both through a gateway, lean backends)")
    for c in (16, 64):
        s.bench.compare(
            "logging off vs on",
            ("off", f"{s.nolog.url}/{KEY}"),
            ("on", f"{s.lean.url}/{KEY}"),
            s.body["1row"],
            c,
        )


def section_lean(s: Setup) -> None:
    print("\n== `mlflow models serve` vs the lean backend, called directly")
    for c in (1, 16, 64):
        s.bench.compare(
            "mlflow serve vs lean backend",
            ("mlflow", s.backend_url(s.classic)),
            ("lean", s.backend_url(s.lean)),
            s.body["1row"],
            c,
        )


def section_batching(s: Setup) -> None:
    print("\n== batching: 1-row calls, direct `mlflow models serve` vs gateway with batching")
    gw, direct = s.classic, s.backend_url(s.classic)
    for c in (1, 16, 64):
        http("POST", f"{gw.url}/deploy/{MODEL}/1?max_batch_size=1")
        unbatched = s.bench.wrk(f"{gw.url}/{KEY}", s.body["1row"], c)
        http("POST", f"{gw.url}/deploy/{MODEL}/1?max_batch_size=64&max_batch_delay_ms=2")
        row = s.bench.compare(
            "direct vs gateway+batching",
            ("direct", direct),
            ("batched", f"{gw.url}/{KEY}"),
            s.body["1row"],
            c,
        )
        row["gateway_unbatched"] = unbatched
        print(
            f"   gateway without batching: {unbatched['rps']:.0f} rps, p99 {unbatched['p99_ms']:.1f} ms"
        )
    http("POST", f"{gw.url}/deploy/{MODEL}/1?max_batch_size=1")


def section_replicas(s: Setup) -> None:
    print("\n== 1 vs 2 replicas (through the gateway, lean backends)")
    gw = s.nolog
    http("POST", f"{gw.url}/scale/{KEY}?replicas=1")
    one = s.bench.wrk(f"{gw.url}/{KEY}", s.body["1row"], 64)
    http("POST", f"{gw.url}/scale/{KEY}?replicas=2")
    two = s.bench.wrk(f"{gw.url}/{KEY}", s.body["1row"], 64)
    http("POST", f"{gw.url}/scale/{KEY}?replicas=1")
    row = {
        "scenario": "1 vs 2 replicas",
        "connections": 64,
        "body": "1row",
        "1 replica": one,
        "2 replicas": two,
        "labels": ["1 replica", "2 replicas"],
        "rps_ratio": two["rps"] / one["rps"],
        "p50_added_ms": two["p50_ms"] - one["p50_ms"],
    }
    s.bench.results.append(row)
    print(format_row(row))


def section_deploy(s: Setup) -> None:
    print("\n== deploy-to-ready and memory per deployment (median of 3)")
    costs = {"lean": deploy_cost(s.lean, "2", 3), "mlflow": deploy_cost(s.classic, "2", 3)}
    for name, cost in costs.items():
        print(
            f"   {name:<7} ready in {cost['deploy_seconds']:.2f} s, {cost['rss_mb']:.0f} MB resident"
        )
    print(
        f"   lean/mlflow: time x{costs['lean']['deploy_seconds'] / costs['mlflow']['deploy_seconds']:.2f},"
        f" memory x{costs['lean']['rss_mb'] / costs['mlflow']['rss_mb']:.2f}"
    )
    s.bench.results.append({"scenario": "deploy cost", **costs})


def v2_body(split_body: Path) -> Path:
    """The same rows as an Open Inference Protocol request: one FP64 [N] tensor per column."""
    split = json.loads(split_body.read_text())["dataframe_split"]
    columns = list(zip(*split["data"], strict=True))
    inputs = [{"name": name, "datatype": "FP64", "shape": [len(values)], "data": list(values)}
              for name, values in zip(split["columns"], columns, strict=True)]  # fmt: skip
    path = split_body.with_name(f"{split_body.stem}-v2.json")
    path.write_text(json.dumps({"inputs": inputs}))
    return path


def section_v2(s: Setup) -> None:
    print("\n== Open Inference Protocol (V2) infer vs /invocations, through the gateway")
    gw = s.lean
    v2 = v2_body(s.body["1row"])
    status, answer = http("POST", f"{gw.url}/v2/models/{MODEL}/versions/1/infer", v2.read_bytes())
    if status != 200:
        raise RuntimeError(f"V2 infer failed: {status} {answer}")
    for c in (1, 64):
        s.bench.compare(
            "/invocations vs V2 infer",
            ("invocations", f"{gw.url}/{KEY}/invocations"),
            ("v2", f"{gw.url}/v2/models/{MODEL}/versions/1/infer"),
            s.body["1row"],
            c,
            body_b=v2,
        )
    # In front of a fixed-answer backend the gateway is all there is: the translation's
    # whole cost shows (the model above takes most of a real call's time).
    trivial = s.trivial
    for c in (1, 64):
        s.bench.compare(
            "/invocations vs V2 (trivial backend)",
            ("invocations", f"{trivial.url}/{KEY}/invocations"),
            ("v2", f"{trivial.url}/v2/models/{MODEL}/versions/1/infer"),
            s.body["1row"],
            c,
            body_b=v2,
        )


def section_ray(s: Setup) -> None:
    print(
        "\n== Ray placement: the gateway on host A, its backend on host B (two network namespaces)"
    )
    sys.path.insert(0, str(REPO))  # the cluster tests' two-host set-up, measured as tested
    from tests.cluster.two_hosts import TwoHosts, why_not

    if why_not():
        print(f"   skipped: {why_not()}")
        return
    pin = s.bench.pin
    hosts = TwoHosts(s.bench.work / "hosts").up()
    try:
        hosts.start_ray(pin=pin[0] if pin else None)  # the backends run on B, on these cores
        uri = hosts.start_mlflow()
        hosts.register(uri, MODEL)
        quiet = {"GATEWAY_LOG_INPUTS": "0", "GATEWAY_LOG_LEVEL": "WARNING"}
        on_ray = hosts.start_gateway("gw-ray", uri, 7000, pin=pin[1] if pin else None, **quiet)
        # Local backends are the gateway's children and inherit its (the backends') cores.
        local = hosts.start_gateway("gw-local", uri, 7001, pin=pin[0] if pin else None,
                                    GATEWAY_PLACEMENT="local", **quiet)  # fmt: skip
        costs = {
            "ray": ray_deploy_cost(hosts, on_ray, 3),
            "local": ray_deploy_cost(hosts, local, 3),
        }
        for name, cost in costs.items():
            print(f"   deploy-to-ready, {name:<5}: {cost['deploy_seconds']:.2f} s (median of 3)")
        ratio = costs["ray"]["deploy_seconds"] / costs["local"]["deploy_seconds"]
        print(f"   ray/local deploy-to-ready: x{ratio:.2f}")
        s.bench.results.append(
            {"scenario": "deploy-to-ready, ray vs local", **costs, "ratio": ratio}
        )

        status, body = hosts.http(
            "POST", f"{on_ray}/deploy/{MODEL}/1?resources=%7B%22host_b%22%3A1%7D"
        )
        if status != 201:
            raise RuntimeError(f"deploy on Ray failed: {status} {body}")
        time.sleep(1.0)  # let the server settle after its first answer
        memory = ray_memory(hosts)
        # The gateway's own connection to the cluster (a Ray driver in its process).
        memory["gateway_driver_mb"] = group_rss_mb(hosts.gateways["gw-ray"].pid) - group_rss_mb(
            hosts.gateways["gw-local"].pid
        )
        print(f"   Ray's resident memory: head node {memory['head_node_mb']:.0f} MB, worker node"
              f" {memory['worker_node_mb']:.0f} MB, each replica's actor {memory['actor_mb']:.0f} MB"
              f" (next to its {memory['backend_mb']:.0f} MB scoring server), and"
              f" {memory['gateway_driver_mb']:.0f} MB more in the gateway")  # fmt: skip
        s.bench.results.append({"scenario": "ray memory", **memory})

        direct = f"{body['replicas'][0]['endpoint']}/invocations"
        s.bench.wrk_prefix = ["ip", "netns", "exec", hosts.a]  # wrk runs on host A
        for c in (1, 16, 64):
            s.bench.compare("direct vs gateway (Ray, across hosts)", ("direct", direct),
                            ("gateway", f"{on_ray}/{KEY}"), s.body["1row"], c)  # fmt: skip
    finally:
        s.bench.wrk_prefix = []
        hosts.down()


def ray_deploy_cost(hosts: Any, gw: str, cycles: int) -> dict[str, Any]:
    """Median seconds a deploy call takes to answer (backend ready), from host A."""
    times = []
    for _ in range(cycles):
        status, body, seconds = hosts.timed_http("POST", f"{gw}/deploy/{MODEL}/1")
        if status != 201:
            raise RuntimeError(f"deploy on {gw} failed: {status} {body}")
        times.append(seconds)
        hosts.http("POST", f"{gw}/undeploy/{KEY}")
    return {"deploy_seconds": statistics.median(times), "deploy_seconds_all": times}


def ray_memory(hosts: Any) -> dict[str, float]:
    """Resident memory of Ray's own processes on each host, and of one replica's actor."""

    def rss(ns: str, kind: str) -> float:
        total = 0
        for pid in hosts.pids(ns):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            actor = cmd.startswith("ray::BackendActor")
            ray_process = "site-packages/ray/" in cmd or cmd.startswith("ray::")
            backend = "uvicorn" in cmd
            if (
                (kind == "ray" and ray_process and not actor)
                or (kind == "actor" and actor)
                or (kind == "backend" and backend)
            ):
                total += next(int(line.split()[1]) for line in status.splitlines()
                              if line.startswith("VmRSS:"))  # fmt: skip
        return total / 1024

    return {"head_node_mb": rss(hosts.a, "ray"), "worker_node_mb": rss(hosts.b, "ray"),
            "actor_mb": rss(hosts.b, "actor"), "backend_mb": rss(hosts.b, "backend")}  # fmt: skip


SECTIONS = {
    "direct": section_direct,
    "trivial": section_trivial,
    "logging": section_logging,
    "lean": section_lean,
    "batching": section_batching,
    "replicas": section_replicas,
    "deploy": section_deploy,
    "v2": section_v2,
    "ray": section_ray,
    "samecore": section_samecore,
    "cpu": section_cpu,
    "overload": section_overload,
    "wake": section_wake,
}


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
