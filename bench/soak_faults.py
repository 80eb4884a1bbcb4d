"""The soak's faults that are not signals: a locked store, a full spool disk, and
connections that never finish (slowloris) or never start (an idle flood).

Each one is bounded in time and undone by its owner: the lock is a transaction
rolled back, the filler file is deleted and the tmpfs unmounted, every socket is
closed. The blocking ones (SQLite, filling a disk) run in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import sqlite3
import statistics
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

# ------------------------------------------------------------------ store lock


def hold_store_lock(db: Path, seconds: float) -> dict[str, float]:
    """Open the gateway's SQLite file and hold `BEGIN EXCLUSIVE` for `seconds`.

    Blocking: run it in a thread. In WAL mode this shuts out every other writer
    (the inference-log writer) while readers go on.
    """
    started = time.monotonic()
    con = sqlite3.connect(db, timeout=30, isolation_level=None)
    try:
        con.execute("BEGIN EXCLUSIVE")
        waited = time.monotonic() - started
        time.sleep(seconds)
        con.execute("ROLLBACK")
    finally:
        con.close()
    return {"waited_for_lock_s": round(waited, 3), "held_s": round(seconds, 3)}


# ------------------------------------------------------------------ tiny disk


class TinyDisk:
    """A small tmpfs mounted over a directory, filled to the last byte on demand.

    Mounting needs root; without it `mount()` says why and the fault is skipped.
    """

    def __init__(self, directory: Path, size_mb: int) -> None:
        self.directory = directory
        self.size_mb = size_mb
        self.mounted = False
        self.filler = directory / "soak-filler.bin"

    def mount(self) -> str | None:
        """Mount it; None on success, else the reason the fault is skipped."""
        if os.geteuid() != 0:
            return "not root: no tmpfs can be mounted, the full-disk fault is skipped"
        self.directory.mkdir(parents=True, exist_ok=True)
        options = f"size={self.size_mb}m,mode=0755"
        try:
            done = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", options, "soak-tmpfs", str(self.directory)],
                capture_output=True, text=True, timeout=30, check=False,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"mount failed: {exc}"
        if done.returncode != 0:
            return f"mount failed: {done.stderr.strip() or done.returncode}"
        self.mounted = True
        return None

    def fill(self) -> int:
        """Write a filler file until ENOSPC; the bytes written. Blocking."""
        written = 0
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for chunk in (b"\0" * 65536, b"\0" * 4096, b"\0"):
                while True:
                    try:
                        n = os.write(fd, chunk)
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
                    written += n
                    if n < len(chunk):
                        break
        finally:
            os.close(fd)
        return written

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def free_bytes(self) -> int:
        st = os.statvfs(self.directory)
        return st.f_bavail * st.f_frsize

    def unmount(self) -> str | None:
        """Unmount (lazily if something still holds a file there); None when done."""
        if not self.mounted:
            return None
        with contextlib.suppress(OSError):
            self.free()
        for argv in (["umount", str(self.directory)], ["umount", "-l", str(self.directory)]):
            done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
            if done.returncode == 0:
                self.mounted = False
                return None
        return f"could not unmount {self.directory}: {done.stderr.strip()}"


# ------------------------------------------------ slowloris and an idle flood


def _close_stats(closed: list[float]) -> dict[str, Any]:
    return {
        "closed_by_gateway": len(closed),
        "median_s_to_close": round(statistics.median(closed), 2) if closed else None,
        "max_s_to_close": round(max(closed), 2) if closed else None,
    }


async def _connect(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection(host, port), 10)


def _first_line(data: bytes) -> str:
    return data.split(b"\r\n", 1)[0].decode("latin-1")[:40] if data else "closed without answer"


async def slowloris(
    host: str, port: int, path: str, sockets: int, seconds: float, interval: float = 0.5
) -> dict[str, Any]:
    """`sockets` connections that send headers one byte every `interval` and never end
    them, for at most `seconds`. Reports how many the gateway closed, and how fast."""
    deadline = time.monotonic() + seconds
    line = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
    closed: list[float] = []
    answers: Counter[str] = Counter()
    refused = 0

    async def one(i: int) -> None:
        nonlocal refused
        started = time.monotonic()
        try:
            reader, writer = await _connect(host, port)
        except (OSError, TimeoutError):
            refused += 1
            return
        stream = (line + "".join(f"X-Pad-{i}-{n}: y\r\n" for n in range(10_000))).encode()
        read = asyncio.ensure_future(reader.read(4096))
        try:
            for byte in stream:
                if time.monotonic() >= deadline or read.done():
                    break
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.wait({read}, timeout=interval)
            if read.done():
                answers[_first_line(read.result())] += 1
                closed.append(time.monotonic() - started)
        except OSError:  # reset or broken pipe: the gateway closed it
            answers["reset"] += 1
            closed.append(time.monotonic() - started)
        finally:
            read.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await read
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    await asyncio.gather(*(one(i) for i in range(sockets)))
    return {"sockets": sockets, "refused": refused, **_close_stats(closed),
            "still_open_at_end": sockets - refused - len(closed),
            "answers": dict(answers)}  # fmt: skip


async def idle_flood(host: str, port: int, sockets: int, seconds: float) -> dict[str, Any]:
    """Open `sockets` connections that send nothing, keep them at most `seconds`.
    Reports how many were accepted, refused (503 or a failed connect) and closed."""
    deadline = time.monotonic() + seconds
    closed: list[float] = []
    answers: Counter[str] = Counter()
    refused = 0
    opened: list[asyncio.StreamWriter] = []

    async def one() -> None:
        nonlocal refused
        started = time.monotonic()
        try:
            reader, writer = await _connect(host, port)
        except (OSError, TimeoutError):
            refused += 1
            return
        opened.append(writer)
        try:
            data = await asyncio.wait_for(reader.read(4096), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            return  # still open at the deadline: closed by us below
        except OSError:
            data = b"reset"
        answers[_first_line(data)] += 1
        closed.append(time.monotonic() - started)

    # Open in waves, so the accept queue never overflows into SYN retries.
    tasks: list[asyncio.Task[None]] = []
    try:
        for first in range(0, sockets, 100):
            tasks.extend(asyncio.ensure_future(one()) for _ in range(min(100, sockets - first)))
            await asyncio.sleep(0.05)
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for writer in opened:
            writer.close()
    return {"sockets": sockets, "accepted": len(opened), "refused": refused,
            **_close_stats(closed), "still_open_at_end": len(opened) - len(closed),
            "answers": dict(answers)}  # fmt: skip
