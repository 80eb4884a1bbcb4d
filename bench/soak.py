"""`make soak`: steady load with faults on a schedule, then what was lost and left.

One run trains and registers the demo model in a temporary MLflow registry,
starts `modelgw serve` as a user would (our child, its own process group, on
127.0.0.1), deploys it with 2 replicas and posts 1-row calls at concurrency 32,
each with its own X-Request-ID, while the schedule (bench/soak_schedule.py)
injects one fault per window: kill -9 and SIGSTOP of a backend, a lock on the
inference store, a full disk under the gateway's journal or spool (a small tmpfs,
root only), replace and scale, a slowloris, an idle-connection flood, kill -9 of
the gateway and a restart.

Then it stops the gateway (SIGTERM), reads the inference log's SQLite file and
reports per window: calls, failures by cause, latency, and answered (2xx) calls
missing from the log, which must be 0 except where the gateway counted them lost
(the full disk); plus the gateway's RSS and open files at start and end, and any
process or port left behind. A table is printed, JSON goes to
bench-results/soak.json. It is a benchmark, not a test: nothing fails on a figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

from bench.soak_faults import TinyDisk
from bench.soak_helpers import REPO, bodies, free_port
from bench.soak_load import Load, Outcome, summarize
from bench.soak_procs import (
    GatewayProcess,
    command_line,
    listening_ports,
    port_range,
    processes_with_env,
    usage,
    wait_gone,
)
from bench.soak_report import print_report
from bench.soak_schedule import LEAD, OVERRUN, Action, Window, schedule, steady

MODEL = "soak-wine"
TEARDOWN = 90.0  # seconds kept for the final drain, stop and leftover check
# Settings a user would choose for this: a hung backend is found in ~3 s instead of
# 15 (1 s x 3 pings), and a 15 s store lock overflows memory into the spool.
GATEWAY_ENV = {
    "GATEWAY_HEALTH_INTERVAL": "1",
    "GATEWAY_HEALTH_FAILURES": "3",
    "GATEWAY_STOP_TIMEOUT": "5",
    "GATEWAY_LOG_MAX_PENDING": "300",
    "GATEWAY_LOG_LEVEL": "INFO",
}


class Soak:
    """The gateway under test, the management client, and what the run measured."""

    def __init__(self, work: Path, args: argparse.Namespace) -> None:
        self.work, self.args = work, args
        self.host, self.port = "127.0.0.1", free_port()
        self.model, self.key = MODEL, f"{MODEL}-1"
        self.data_dir = work / "data"
        self.ports = port_range(12)
        self.run_id = uuid.uuid4().hex[:8]
        self.t0 = time.monotonic()
        self.gateway = GatewayProcess({}, work / "gateway.log")
        self.disk: TinyDisk | None = None
        self.disk_skipped: str | None = None
        self.session: aiohttp.ClientSession | None = None
        self.backend_pids: set[int] = set()
        self.resources: dict[str, Any] = {}
        self.lost_before_kill = 0
        self.lost_at_restart = 0
        self.lost_at_start = 0  # the running gateway's `lost` when it started
        self.kill_at: float | None = None
        self.skipped: list[str] = []
        self.settings = {**GATEWAY_ENV, **self.journal_env()}
        # The load ends by then, so that teardown keeps the whole run within --budget.
        self.deadline = time.monotonic() + args.budget * 60 - TEARDOWN

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def inference_db(self) -> Path:
        return self.data_dir / "inference.db"

    def spool_dirs(self) -> list[Path]:
        """Where the gateway keeps logged calls on its own disk: its inference journal's
        directory first when it has one, then the spool (what releases before the
        journal used for overflow)."""
        from gateway.settings import Settings

        settings = Settings.model_validate({"data_dir": self.data_dir})
        found = [getattr(settings, name, None) for name in ("journal_dir", "spool_dir")]
        return list(dict.fromkeys(Path(p) for p in found if p is not None))

    @staticmethod
    def journal_env() -> dict[str, str]:
        """Small journal segments where the gateway has a journal, so that a few of them
        fit on the small disk and a full one is a fault, not the normal state."""
        from gateway.settings import Settings

        if "log_journal_segment_mb" in Settings.model_fields:
            return {"GATEWAY_LOG_JOURNAL_SEGMENT_MB": "1"}
        return {}

    # ------------------------------------------------------------ the gateway

    async def api(self, method: str, path: str, timeout: float = 180) -> tuple[int, Any]:
        assert self.session is not None
        try:
            async with self.session.request(
                method, self.base + path, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as resp:
                data = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            return 0, repr(exc)
        try:
            return status, json.loads(data)
        except ValueError:
            return status, data.decode(errors="replace")[:300]

    async def deployment(self) -> dict[str, Any]:
        status, body = await self.api("GET", "/get_deployed_models", timeout=10)
        return body.get(self.key, {}) if status == 200 and isinstance(body, dict) else {}

    async def replica(self, index: int) -> dict[str, Any]:
        replicas = (await self.deployment()).get("replicas", [])
        return replicas[index] if len(replicas) > index else {}

    async def log_stats(self) -> dict[str, Any]:
        status, body = await self.api("GET", "/health", timeout=10)
        if status != 200 or not isinstance(body, dict):
            return {}
        return body.get("inference_log") or {}

    @staticmethod
    def delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
        keys = ("submitted", "written", "spooled", "replayed", "unjournaled", "lost")
        return {f"log_{k}": after.get(k, 0) - before.get(k, 0) for k in keys}

    async def _poll(self, check: Any, timeout: float, interval: float = 0.2) -> float | None:
        """Seconds until `await check()` is true, or None after `timeout`."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if await check():
                return round(time.monotonic() - started, 2)
            await asyncio.sleep(interval)
        return None

    async def wait_health(self, timeout: float) -> float | None:
        async def up() -> bool:
            return (await self.api("GET", "/health", timeout=2))[0] == 200

        return await self._poll(up, timeout)

    async def wait_running(self, timeout: float) -> float | None:
        async def running() -> bool:
            replicas = (await self.deployment()).get("replicas", [])
            return bool(replicas) and all(
                r["status"] == "running" and r["healthy"] for r in replicas
            )

        return await self._poll(running, timeout)

    async def wait_replaced(self, index: int, old_pid: int, timeout: float) -> float | None:
        async def replaced() -> bool:
            r = await self.replica(index)
            return r.get("pid") not in (None, old_pid) and r.get("status") == "running"

        return await self._poll(replaced, timeout)

    async def wait_drained(self, timeout: float, idle: bool = False) -> float | None:
        """Seconds until every call submitted is settled, or None after `timeout`.

        Settled: written, lost (since this process started: a journal's count is
        carried over restarts) or sampled out, everything that went to disk read back,
        nothing pending in memory, no spool file left. `pending` alone is not enough:
        calls waiting on disk, or in the middle of a spill, are not in it. With
        `idle` (no load any more) the journal must be empty too: an idle gateway
        removes its segments once the store has every call in them, so this also
        holds when a restarted gateway's `written` includes an earlier one's calls.
        """

        async def drained() -> bool:
            stats = await self.log_stats()
            if not stats or stats.get("pending", 1) != 0 or self.spool_files():
                return False
            lost = stats.get("lost", 0) - self.lost_at_start
            settled = stats.get("written", 0) + stats.get("sampled_out", 0) + lost
            if settled < stats.get("submitted", 0):
                return False
            if stats.get("replayed", 0) < stats.get("spooled", 0):
                return False
            return not (idle and self.journal_files())

        return await self._poll(drained, timeout, 0.5)

    def spool_files(self) -> list[Path]:
        return [f for d in self.spool_dirs() if d.is_dir() for f in d.glob("spool-*.jsonl")]

    def journal_files(self) -> dict[str, int]:
        """Journal segments holding bytes, by name (an empty directory without a journal)."""
        found = {}
        for d in self.spool_dirs():
            for f in d.glob("seg-*.log") if d.is_dir() else ():
                with contextlib.suppress(OSError):
                    if size := f.stat().st_size:
                        found[f.name] = size
        return found

    async def backend_usage(self) -> list[dict[str, Any]]:
        return [
            usage(r["pid"]) for r in (await self.deployment()).get("replicas", []) if r.get("pid")
        ]

    async def watch_backends(self, stop: asyncio.Event) -> None:
        """Remember every backend pid the gateway reports, for the leftover check."""
        while not stop.is_set():
            for replica in (await self.deployment()).get("replicas", []):
                if replica.get("pid"):
                    self.backend_pids.add(replica["pid"])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)


# -------------------------------------------------------------------- the run


async def run(soak: Soak) -> dict[str, Any]:
    args = soak.args
    body = bodies(soak.work)["1row"].read_bytes()
    soak.session = aiohttp.ClientSession()
    stop, watching = asyncio.Event(), asyncio.Event()
    load = Load(f"{soak.base}/{soak.key}", body, args.concurrency, soak.run_id, soak.t0)
    windows: list[dict[str, Any]] = []
    watcher: asyncio.Task[None] | None = None
    try:
        if await soak.wait_health(90) is None:
            raise RuntimeError(f"the gateway did not start:\n{soak.gateway.log_tail()}")
        status, answer = await soak.api("POST", f"/deploy/{MODEL}/1?replicas=2")
        if status not in (200, 201):
            raise RuntimeError(f"deploy failed: {status} {answer}")
        watcher = asyncio.create_task(soak.watch_backends(watching))
        soak.resources["gateway_before_load"] = usage(soak.gateway.pid)
        soak.t0 = load.t0 = time.monotonic()
        load_task = asyncio.create_task(load.run(stop))
        for window, action in schedule(args.minutes):
            if soak.deadline - time.monotonic() < window.minimum:
                soak.skipped.append(
                    f"{window.name}: out of time (the soak stops within its budget)"
                )
                continue
            windows.append(await run_window(soak, window, action, soak.deadline))
            print(f"  {window.name:<16} {windows[-1]['end_s'] - windows[-1]['start_s']:5.1f} s"
                  f"  {json.dumps(windows[-1]['action'])[:160]}", flush=True)  # fmt: skip
            if window.name == "steady":
                soak.resources["gateway_start"] = usage(soak.gateway.pid)
                soak.resources["backends_start"] = await soak.backend_usage()
        # Measured under load, as at the start; then again once the load has stopped.
        soak.resources["gateway_end"] = usage(soak.gateway.pid)
        soak.resources["backends_end"] = await soak.backend_usage()
        stop.set()
        await load_task
        drained = await soak.wait_drained(45, idle=True)
        soak.resources["gateway_after_load"] = usage(soak.gateway.pid)
        final_stats = await soak.log_stats()
    finally:
        stop.set()
        watching.set()
        if watcher is not None:
            await watcher
        await soak.session.close()
    return {"windows": windows, "outcomes": load.outcomes, "drained_at_end_s": drained,
            "final_log_stats": final_stats}  # fmt: skip


async def run_window(soak: Soak, window: Window, action: Action, deadline: float) -> dict[str, Any]:
    """Run one window: load alone for LEAD seconds, then the fault's action, bounded
    by the window plus OVERRUN and by the soak's `deadline` (monotonic)."""
    start = time.monotonic()
    if window.hold or action is not steady:
        await asyncio.sleep(LEAD)
    fault_at = time.monotonic()
    task = asyncio.create_task(action(soak, window), name=f"soak-{window.name}")
    limit = max(1.0, min(window.seconds + OVERRUN, deadline - time.monotonic()))
    done, _ = await asyncio.wait({task}, timeout=limit)
    if done:
        try:
            result = task.result()
        except Exception as exc:  # a fault that could not be injected is reported, not fatal
            result = {"error": repr(exc)}
        await asyncio.sleep(max(0.0, start + window.seconds - time.monotonic()))
    else:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        result = {"error": f"did not finish within {limit:.0f} s"}
    return {"name": window.name, "what": window.what, "start_s": round(start - soak.t0, 2),
            "fault_at_s": round(fault_at - soak.t0, 2) if action is not steady else None,
            "end_s": round(time.monotonic() - soak.t0, 2), "action": result}  # fmt: skip


def logged_ids(db: Path, run_id: str) -> dict[str, int]:
    """Request id -> rows in the inference log, for this run's calls."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "SELECT request_id, COUNT(*) FROM inference_log WHERE request_id LIKE ?"
            " GROUP BY request_id",
            (f"soak-{run_id}-%",),
        ).fetchall()
    finally:
        con.close()
    return dict(rows)


def account(soak: Soak, result: dict[str, Any], logged: dict[str, int]) -> dict[str, Any]:
    """Per window and in total: outcomes, and answered calls missing from the log."""
    outcomes: list[Outcome] = result["outcomes"]
    answered = {o.request_id for o in outcomes if not o.cause}
    missing = answered - logged.keys()
    for window in result["windows"]:
        inside = [o for o in outcomes if window["start_s"] <= o.sent < window["end_s"]]
        window.update(summarize(inside, missing, window["start_s"], window["end_s"]))
    at_kill = None
    if soak.kill_at is not None:
        # The calls a killed gateway could lose: those it answered just before the kill
        # (the writer batches every 0.1 s; the client sees an answer a little later).
        kill = soak.kill_at
        last = [o for o in outcomes if not o.cause and kill - 1.0 <= o.sent + o.took <= kill + 0.5]
        at_kill = {
            "answered_2xx_in_the_second_before": len(last),
            "of_those_missing_from_log": sum(1 for o in last if o.request_id in missing),
            "missing_sent_within_30s_of_kill": sum(
                1 for o in outcomes if o.request_id in missing and abs(o.sent - kill) < 30
            ),
        }
    # A gateway that keeps its lost counter on disk (the journal's) starts again from
    # the killed one's count; otherwise the two processes' counts add up.
    final = result["final_log_stats"].get("lost", 0)
    carried = soak.lost_at_restart >= soak.lost_before_kill > 0
    lost = final if carried else soak.lost_before_kill + final
    return {
        "at_gateway_kill": at_kill,
        "totals": summarize(outcomes, missing, 0.0, max((o.sent for o in outcomes), default=0.0)),
        "log": {
            "answered_2xx": len(answered),
            "logged": len(answered & logged.keys()),
            "missing": len(missing),
            "counted_lost_by_gateway": lost,
            "lost_counter": {
                "before_kill": soak.lost_before_kill,
                "after_restart": soak.lost_at_restart,
                "final": final,
                "carried_over_restart": carried,
            },
            "missing_not_counted": max(0, len(missing) - lost),
            "logged_twice": sum(1 for n in logged.values() if n > 1),
            "logged_not_answered_2xx": len(logged.keys() - answered),
        },
    }


def leftovers(soak: Soak) -> dict[str, Any]:
    """Processes and ports still there after the final stop (waited for up to 15 s)."""
    still = wait_gone(sorted(soak.backend_pids | set(soak.gateway.pids)), 15)
    by_env = processes_with_env("GATEWAY_DATA_DIR", str(soak.data_dir))
    pids = sorted(set(still) | set(by_env))
    ports = set(range(soak.ports[0], soak.ports[1] + 1)) | {soak.port}
    return {
        "backend_pids_seen": len(soak.backend_pids),
        "processes": [{"pid": p, "cmd": command_line(p)} for p in pids],
        "listening_ports": listening_ports(ports),
        # Calls a stopped gateway leaves on disk reach the store only at its next start:
        # the log was read without them.
        "journal_segments_left": soak.journal_files(),
        "spool_files_left": len(soak.spool_files()),
    }


def git_commit() -> str:
    def git(*argv: str) -> str:
        try:
            done = subprocess.run(
                ["git", *argv], cwd=REPO, capture_output=True, text=True, check=False
            )
        except OSError:
            return "unknown"
        return done.stdout.strip()

    dirty = git("status", "--porcelain")
    return git("rev-parse", "--short", "HEAD") + (
        " (dirty)" if dirty not in ("", "unknown") else ""
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=5.0,
                        help="minutes of load (the windows scale; 3 is the shortest schedule)")  # fmt: skip
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--budget", type=float, default=10.0,
                        help="minutes the whole run may take, set-up included: windows that"
                        " no longer fit are skipped and reported")  # fmt: skip
    parser.add_argument("--disk-mb", type=int, default=16,
                        help="size of the tmpfs mounted over the gateway's journal (or spool)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=REPO / "bench-results" / "soak.json")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65536, hard)
        )
    wall = time.monotonic()
    commit = git_commit()  # the code that runs: read before anything is written
    work = Path(tempfile.mkdtemp(prefix="modelgw-soak-"))
    soak = Soak(work, args)
    report: dict[str, Any] = {}
    print(
        f"soak: work dir {work}, gateway on {soak.base}, {args.minutes:g} min of load at c={args.concurrency}"
    )
    try:
        from gateway.deploy.demo import train_and_register

        uri = f"sqlite:///{work / 'mlflow.db'}"
        train_and_register(uri, MODEL, artifact_location=work / "artifacts", reuse=False)
        soak.data_dir.mkdir()
        spool = soak.spool_dirs()
        soak.disk = TinyDisk(spool[0], args.disk_mb)
        soak.disk_skipped = soak.disk.mount()
        if soak.disk_skipped:
            soak.skipped.append(f"disk_full: {soak.disk_skipped}")
            soak.disk = None
        soak.gateway.env = {
            **os.environ, "MLFLOW_TRACKING_URI": uri, "GATEWAY_HOST": soak.host,
            "GATEWAY_PORT": str(soak.port), "START_PORT": str(soak.ports[0]),
            "END_PORT": str(soak.ports[1]), "GATEWAY_DATA_DIR": str(soak.data_dir), **soak.settings,
        }  # fmt: skip
        soak.gateway.start()
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            result = runner.run(run(soak))
        soak.gateway.stop()
        report = {
            **account(soak, result, logged_ids(soak.inference_db, soak.run_id)),
            "windows": result["windows"],
            "drained_at_end_s": result["drained_at_end_s"],
            "resources": soak.resources,
            "leftovers": leftovers(soak),
        }
    finally:
        if soak.gateway.alive():
            soak.gateway.stop(30)
        # Never leave a backend behind, whatever happened: only processes of our data dir.
        for pid in processes_with_env("GATEWAY_DATA_DIR", str(soak.data_dir)):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        unmounted = soak.disk.unmount() if soak.disk is not None else None
        if unmounted:
            print(unmounted, file=sys.stderr)
        elif not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "commit": commit,
        "machine": {
            "platform": platform.platform(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "root": os.geteuid() == 0,
            # 1,000 idle sockets and the load need more than a 1,024 default: raised above.
            "open_files_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        },
        "minutes": args.minutes,
        "concurrency": args.concurrency,
        "gateway_settings": soak.settings,
        "small_disk": str(soak.disk.directory) if soak.disk is not None else None,
        "skipped": soak.skipped,
        "wall_s": round(time.monotonic() - wall, 1),
        **report,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print_report(report)
    print(f"\nreport: {args.out}")
    return 0


def _loop_factory() -> Any:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


if __name__ == "__main__":
    raise SystemExit(main())
