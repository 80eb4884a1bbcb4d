"""The journal itself: torn frames, lost counts that outlive the process, a full disk,
group fsync, and the settings that choose the fsync mode.

A full disk is made real with RLIMIT_FSIZE in a child process: the kernel refuses a
write past the limit (EFBIG, or a short write), as it refuses one past the free space.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.records.journal import Journal, segment_name
from gateway.records.writer import InferenceLogger
from gateway.settings import Settings
from tests.gateway.records.test_writer import FlakyStore, eventually, segments, submit
from tests.support import REPO


def _append(journal: Journal, i: int, answer: bytes | None = b"[1]") -> tuple[int, int, int]:
    return journal.append(
        i.to_bytes(16, "big"), float(i), "m", "1", "application/json", f"call-{i}", "primary",
        b'{"instances": [[%d]]}' % i, answer,
    )  # fmt: skip


def test_frames_read_back_whole_and_a_torn_tail_is_cut_once(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.open()
    positions = [_append(journal, i) for i in range(3)]
    seq, _, end = positions[-1]
    journal.seal()
    journal.close()
    journal.close_counters()
    path = tmp_path / segment_name(seq)
    assert path.stat().st_size == end
    with open(path, "ab") as f:  # a frame cut short by a crash: its header and 5 bytes
        f.write((200).to_bytes(4, "little") + (0).to_bytes(4, "little") + b"\x01" * 5)

    again = Journal(tmp_path)
    [(found, size)], lost, held = again.open()
    assert (found, size, lost, held) == (seq, end + 13, 0, 0)
    calls, pos, damaged = again.read(seq, 0, size, limit=100)
    assert [c[7] for c in calls] == ["call-0", "call-1", "call-2"] and damaged and pos == end
    assert path.stat().st_size == end  # cut back to its whole frames: counted once
    assert again.read(seq, 0, end, limit=100)[2] is False


async def test_a_torn_frame_is_counted_lost_and_the_count_survives_restarts(
    tmp_path: Path,
) -> None:
    store = FlakyStore()
    journal = tmp_path / "journal"
    journal.mkdir()
    (journal / segment_name(1)).write_bytes(b"\x00" * 64)  # what a power cut can leave
    log = InferenceLogger(store, journal, flush_interval=0.01)
    await log.start()
    submit(log, 3)
    await eventually(lambda: len(store.rows) == 3 and log.stats.torn == 1)
    await log.close()
    assert log.stats.lost == 1 and segments(journal) == []
    for _ in range(2):  # a stop and a start, twice: the count stays
        again = InferenceLogger(store, journal, flush_interval=0.01)
        await again.start()
        assert again.stats.lost == 1
        await again.close()


async def test_a_counters_file_that_cannot_be_opened_still_replays_the_journal(
    tmp_path: Path,
) -> None:
    journal = tmp_path / "journal"
    dead = Journal(journal)
    dead.open()
    for i in range(3):
        _append(dead, i)
    (journal / "counters").unlink()
    (journal / "counters").mkdir()  # opening it now fails (EISDIR)
    store = FlakyStore()
    log = InferenceLogger(store, journal, flush_interval=0.01)
    await log.start()
    await eventually(lambda: len(store.rows) == 3)
    await eventually(lambda: segments(journal) == [])
    await log.close()
    assert log.stats.replayed == 3 and log.stats.lost == 0


def test_a_full_disk_never_fails_a_call_and_what_dies_in_memory_is_counted(
    tmp_path: Path,
) -> None:
    journal = tmp_path / "journal"
    script = textwrap.dedent(
        f"""
        import asyncio, json, os, resource, signal
        from pathlib import Path
        from gateway.records.writer import InferenceLogger
        from tests.gateway.records.test_writer import FlakyStore

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a refused write, not a killed process

        async def main():
            store = FlakyStore()
            store.down = True
            log = InferenceLogger(store, Path({str(journal)!r}), flush_interval=0.01,
                                  max_pending=4, max_backoff=0.05)
            await log.start()
            # Room for two frames of ~380 bytes: the third is cut short, the rest refused.
            resource.setrlimit(resource.RLIMIT_FSIZE, (1024, resource.RLIM_INFINITY))
            for i in range(10):
                log.submit("m", "1", "application/json", b"x" * 300, b"[1]",
                           request_id=f"c{{i}}")
            print(json.dumps(vars(log.stats)), flush=True)
            os._exit(0)  # as kill -9 would: nothing flushed, nothing closed

        asyncio.run(main())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout)
    # 2 journaled; 8 refused: 2 held in memory (4 in memory at most), 6 lost at once.
    assert (stats["journaled"], stats["unjournaled"], stats["lost"]) == (2, 8, 6)

    async def restart() -> tuple[FlakyStore, InferenceLogger]:
        store = FlakyStore()
        log = InferenceLogger(store, journal, flush_interval=0.01)
        await log.start()
        await eventually(lambda: len(store.rows) == 2)
        await log.close()
        return store, log

    store, log = asyncio.run(restart())
    assert {r.request_id for r in store.rows.values()} == {"c0", "c1"}
    assert log.stats.torn == 0  # the short write was cut off, not left torn
    assert log.stats.lost == 8  # the 2 held in memory died with the process


async def test_with_fsync_always_calls_in_flight_share_one_sync(tmp_path: Path) -> None:
    store = FlakyStore()
    log = InferenceLogger(store, tmp_path / "journal", flush_interval=0.01, fsync="always")
    await log.start()
    assert log.sync_each_call
    covered: list[int] = []
    real_sync = log.journal.sync

    def sync() -> None:
        covered.append(log.journal.appended)
        real_sync()

    log.journal.sync = sync  # type: ignore[method-assign]

    async def call(i: int) -> int:
        submit(log, 1, offset=i)
        mine = log.journal.appended
        await log.durable()
        return mine

    mine = await asyncio.gather(*(call(i) for i in range(50)))
    # Each call returned only after a sync that covered its frame, and they shared syncs.
    assert covered and max(mine) <= covered[-1] and len(covered) < 50
    await log.close()


async def test_fsync_never_and_batch_leave_durable_waits_alone(tmp_path: Path) -> None:
    for mode in ("never", "batch"):
        log = InferenceLogger(FlakyStore(), tmp_path / mode, fsync=mode)  # type: ignore[arg-type]
        assert not log.sync_each_call
        await log.start()
        await log.close()


def test_the_fsync_mode_is_a_validated_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().log_fsync == "batch"  # the stated default
    for mode in ("always", "batch", "never"):
        monkeypatch.setenv("GATEWAY_LOG_FSYNC", mode)
        assert Settings().log_fsync == mode
    monkeypatch.setenv("GATEWAY_LOG_FSYNC", "sometimes")
    with pytest.raises(ValidationError, match="always"):
        Settings()
    monkeypatch.delenv("GATEWAY_LOG_FSYNC")
    with pytest.raises(ValidationError):
        Settings(log_fsync_interval=0)
    with pytest.raises(ValueError, match="fsync"):
        Journal(Path("/nonexistent"), fsync="sometimes")  # type: ignore[arg-type]


def test_a_bad_fsync_mode_is_one_line_naming_its_variable(tmp_path: Path) -> None:
    env = dict(os.environ, GATEWAY_LOG_FSYNC="sometimes", GATEWAY_DATA_DIR=str(tmp_path))
    result = subprocess.run([sys.executable, "-m", "gateway", "serve"], capture_output=True,
                            text=True, timeout=120, env=env, cwd=REPO)  # fmt: skip
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert errors == [
        "modelgw serve: error: GATEWAY_LOG_FSYNC: expected one of always, batch, never,"
        " got 'sometimes'"
    ]


async def test_with_fsync_always_the_proxy_answers_after_the_sync(tmp_path: Path) -> None:
    """Through the real proxy: the answer comes once a sync covered the call's frame."""
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    from gateway.app_keys import BATCHERS, INFERENCE_LOG, METRICS, ROUTES, SETTINGS, UPSTREAM
    from gateway.dataplane import proxy
    from gateway.dataplane.upstream import UpstreamPool
    from gateway.edge.telemetry import GatewayMetrics
    from gateway.errors import error_middleware
    from tests.gateway.dataplane.conftest import deployment, fake_invocations, running_replica

    backend_app = web.Application()
    backend_app.router.add_post("/invocations", fake_invocations)
    backend = TestServer(backend_app, host="127.0.0.1")
    await backend.start_server()
    store = FlakyStore()
    log = InferenceLogger(store, tmp_path / "journal", flush_interval=0.01, fsync="always")
    await log.start()
    assert backend.port is not None
    app = web.Application(middlewares=[error_middleware])
    app[ROUTES] = {"m-1": deployment("m-1", running_replica(backend.port))}
    app[INFERENCE_LOG] = log
    app[BATCHERS] = {}
    app[SETTINGS] = Settings()
    app[METRICS] = GatewayMetrics()
    app[UPSTREAM] = UpstreamPool(read_timeout=30.0)
    proxy.add_routes(app)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        for i in range(3):
            resp = await client.post("/m-1", data=b'{"instances": [[%d]]}' % i,
                                     headers={"Content-Type": "application/json"})  # fmt: skip
            assert resp.status == 200
            # Only a call waiting in durable() starts a sync in this mode.
            assert log.journal.appended == i + 1 and log.syncer._synced == i + 1
        await eventually(lambda: len(store.rows) == 3)
    finally:
        await client.close()
        await app[UPSTREAM].close()
        await log.close()
        await backend.close()
