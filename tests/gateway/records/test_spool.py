"""The spool leaves no partial file behind: not after a failed write, not after a crash.

A full disk is made real with RLIMIT_FSIZE in a child process: the kernel refuses
the write past the limit (EFBIG), as it would refuse one past the free space.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

from gateway.records.spool import Spool
from gateway.records.stores.base import InferenceRecord
from gateway.records.stores.sqlite import SQLiteStore
from gateway.records.writer import InferenceLogger
from tests.support import REPO


def record(i: int, size: int = 100) -> InferenceRecord:
    return InferenceRecord(
        id=f"r{i}", model="m", version="1", ts=1_700_000_000.0 + i,
        content_type="application/json", inputs="x" * size, predictions="[1]",
    )  # fmt: skip


def test_a_write_the_disk_refuses_leaves_no_partial_file(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    script = textwrap.dedent(
        f"""
        import resource, signal, sys
        from pathlib import Path
        from gateway.records.spool import Spool
        from gateway.records.stores.base import InferenceRecord

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a refused write, not a killed process
        records = [InferenceRecord(id=str(i), model="m", version="1", ts=float(i),
                                   content_type="application/json", inputs="x" * 10_000,
                                   predictions=None) for i in range(100)]
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))
        try:
            Spool(Path({str(spool_dir)!r})).write(records)
        except OSError as exc:
            print("refused:", exc.strerror)
            sys.exit(0)
        sys.exit("the write was not refused")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("refused:"), done.stdout
    assert spool_dir.is_dir()
    assert list(spool_dir.iterdir()) == []


def test_a_write_that_fits_is_whole_and_replayable(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    path = spool.write([record(1), record(2)])
    assert path.suffix == ".jsonl"
    assert [r.id for r in spool.read(path)] == ["r1", "r2"]
    assert list(tmp_path.glob("*.partial")) == []


def test_partial_files_of_an_earlier_process_are_removed_at_start(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    whole = spool.write([record(1)])
    left = spool.directory / "spool-1.partial"
    left.write_text('{"id": "half')  # a process killed mid-write
    assert spool.recover() == [whole]
    assert not left.exists()


async def test_the_writer_sweeps_partial_files_when_it_starts(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "inference.db")
    await store.open()
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    left = spool_dir / "spool-1.partial"
    left.write_text('{"id": "half')
    Spool(spool_dir).write([record(7)])
    log = InferenceLogger(store, spool_dir, flush_interval=0.01)
    log.start()
    try:
        for _ in range(1500):  # a bound, not a timing: the writer replays at start
            if log.stats.replayed == 1:
                break
            await asyncio.sleep(0.02)
        assert not left.exists()
        assert log.stats.replayed == 1
        assert list(spool_dir.iterdir()) == []
    finally:
        await log.close()
        await store.close()
