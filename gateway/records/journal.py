"""The inference journal: every logged call is on the gateway's disk before its answer leaves.

Why: calls waiting for the store used to live only in memory, so a gateway killed
during a store outage (or just between two batches) lost calls it had answered.
`InferenceLogger.submit` now appends each call here first: one `os.writev` of one
frame to an O_APPEND segment file. That lands in the page cache, which outlives the
process (kill -9, the OOM killer, a crash) whatever GATEWAY_LOG_FSYNC says; what
outlives the machine (a power cut, a kernel panic) depends on it:

- `never`: nothing is forced; the kernel writes back within its dirty expiry
  (typically 30 s), and a power cut loses what it had not written yet.
- `batch` (the default): a worker thread fdatasyncs the journal every
  GATEWAY_LOG_FSYNC_INTERVAL (1 s by default, as Redis's `everysec`: a group commit
  whose cost is per interval, not per call); a power cut loses at most the calls of
  that last interval.
- `always`: the proxy holds each answer until an fdatasync, done in a worker thread
  and shared by every call in flight, covers its call: nothing answered is lost,
  and each call pays one disk flush of latency.

Layout: `seg-<n>.log` files, numbered in order of creation. A segment is sealed at
`segment_bytes` (or when the writer is idle with everything stored) and removed once
the store has every call in it. A process never appends to a segment an earlier one
left: those are read back at start (replayed into the store: record ids make that
idempotent) and removed.

A frame is `<payload length u32><CRC-32 of the payload u32><payload>`; the payload is a
fixed header (format, the 16-byte record id, time, field lengths), then model, version,
content type, request id, arm, and the body and answer bytes exactly as they came (no
JSON re-encoding: the hot path pays one copy into the page cache). A frame cut short
by a crash, or the zeros a power cut can leave, fails its length or CRC check: reading
stops there, and the segment is cut back to its last whole frame (so the damage is
counted once, however often the segment is read).

`counters` is a fixed-size file holding `lost` (calls that never reached the store)
and `held` (calls the journal could not take, kept only in memory), overwritten in
place: an update needs no new disk block, so it works on a full disk too. At start,
`held` calls died with the earlier process and become `lost`.

Methods that say "blocking" do file I/O: call them in a worker thread. `append` and
`save_counters` run on the event loop: one small write each, to the page cache.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

logger = logging.getLogger(__name__)

Fsync = Literal["always", "batch", "never"]
FSYNC_MODES: tuple[Fsync, ...] = ("always", "batch", "never")

FORMAT = 1
_FRAME = struct.Struct("<II")  # payload length, CRC-32 of the payload
# format, record id, time, lengths of model, version, content type, arm, request id + 1
# (0: none), answer (-1: none) and body.
_HEAD = struct.Struct("<B16sdHHHBHiI")
_COUNTERS = struct.Struct("<QQI")  # lost, held, CRC-32 of the two
_SEGMENT = re.compile(r"seg-(\d+)\.log")
_READ_BUFFER = 1 << 20

# One logged call: (record id, time, model, version, content type, body, answer,
# request id, arm, segment, end offset of its frame); segment 0: not in the journal.
Call = tuple[bytes, float, str, str, str, bytes, bytes | None, str | None, str, int, int]


@dataclass(eq=False)
class _Segment:
    seq: int
    size: int
    fd: int | None = None  # open for appends while ours and not yet closed
    sealed: bool = False  # no more appends; closed by the next sync
    dirty: bool = False  # appended to since its last fdatasync
    earlier: bool = False  # left by an earlier process: read back, never appended to
    started: float = 0.0  # time of its first frame


def segment_name(seq: int) -> str:
    return f"seg-{seq:012d}.log"


def _decode(payload: bytes, seq: int, end: int) -> Call:
    fmt, rid, ts, n_model, n_version, n_type, n_arm, n_request, n_answer, n_body = (
        _HEAD.unpack_from(payload)
    )
    if fmt != FORMAT:
        raise ValueError(f"frame format {fmt}")
    strings = n_model + n_version + n_type + max(n_request - 1, 0) + n_arm
    if _HEAD.size + strings + n_body + max(n_answer, 0) != len(payload):
        raise ValueError("field lengths disagree with the frame")
    i = _HEAD.size
    fields = []
    for n in (n_model, n_version, n_type, n_arm, max(n_request - 1, 0)):
        fields.append(payload[i : i + n].decode())
        i += n
    model, version, content_type, arm, request_id = fields
    body = payload[i : i + n_body]
    i += n_body
    answer = payload[i : i + n_answer] if n_answer >= 0 else None
    return (rid, ts, model, version, content_type, body, answer,
            request_id if n_request else None, arm, seq, end)  # fmt: skip


class Journal:
    """The segment files of one data dir. One writer: this process's event loop."""

    def __init__(
        self, directory: Path, *, fsync: Fsync = "batch", segment_bytes: int = 16 << 20
    ) -> None:
        if fsync not in FSYNC_MODES:
            raise ValueError(f"fsync must be one of {', '.join(FSYNC_MODES)}, not {fsync!r}")
        self.directory = directory
        self.fsync = fsync
        self.segment_bytes = segment_bytes
        #: Frames this process appended: what a sync covers, and `always` waits on.
        self.appended = 0
        self._segments: dict[int, _Segment] = {}  # every segment on disk, by number
        self._current: _Segment | None = None
        self._next_seq = 1
        self._new_entries = False  # a segment was created since the directory's fsync
        self._counters_fd: int | None = None
        self._counters_dirty = False
        self.last_append = 0.0  # time of the last frame
        self._names: dict[tuple[str, str, str, str], tuple[bytes, int, int, int, int]] = {}
        # Held around fdatasync and close of segment fds, in worker threads only: the
        # event loop never waits on it (it only appends, and seals by flag).
        self._io = threading.Lock()

    # ------------------------------------------------------------- start, end

    def open(self) -> tuple[list[tuple[int, int]], int, int]:
        """Blocking. The earlier process's segments (number, size) and counters (lost, held).

        Raises OSError only when the directory cannot be made or listed; then no earlier
        segment is known to this process, so none can be removed by it.
        """
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        earlier = []
        for entry in os.scandir(self.directory):
            match = _SEGMENT.fullmatch(entry.name)
            if match is not None:
                earlier.append((int(match.group(1)), entry.stat().st_size))
        earlier.sort()
        for seq, size in earlier:
            self._segments[seq] = _Segment(seq, size, sealed=True, earlier=True)
        self._next_seq = earlier[-1][0] + 1 if earlier else 1
        try:
            return earlier, *self._open_counters()
        except OSError as exc:  # e.g. a full disk: `lost` is then counted in memory only
            logger.error("the journal's counters file cannot be opened: %s", exc)
            return earlier, 0, 0

    def _open_counters(self) -> tuple[int, int]:
        fd = os.open(self.directory / "counters", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        data = os.pread(fd, _COUNTERS.size, 0)
        self._counters_fd = fd
        if len(data) == _COUNTERS.size:
            lost, held, crc = _COUNTERS.unpack(data)
            if zlib.crc32(data[:16]) == crc:
                return lost, held
            logger.error("the journal's counters file is damaged: lost and held start from 0")
        # Written whole now, so that later updates overwrite a block the file has.
        try:
            self.save_counters(0, 0)
        except OSError:
            self._counters_fd = None
            os.close(fd)
            raise
        return 0, 0

    def close(self, *, remove_all: bool = False) -> None:
        """Blocking. Force what was appended to disk (unless `never`); close sealed segments.

        Seal first, on the loop: only sealed segments are closed here, so no fd the
        loop may still write to is ever closed under it. `remove_all`: the store has
        every call, so no sealed segment is kept.
        """
        self.sync()
        if remove_all:
            for seq in tuple(self._segments):
                self.remove(seq)

    def close_counters(self) -> None:
        """On the loop, last: the counters file's fd is only ever used there."""
        if self._counters_fd is not None:
            os.close(self._counters_fd)
            self._counters_fd = None

    # --------------------------------------------------------------- hot path

    def append(
        self,
        rid: bytes,
        ts: float,
        model: str,
        version: str,
        content_type: str,
        request_id: str | None,
        arm: str,
        body: bytes,
        answer: bytes | None,
    ) -> tuple[int, int, int]:
        """Write one frame with one writev: (segment, start, end) of the frame.

        Raises OSError (a full disk: the caller keeps the call in memory) or
        ValueError (a field too long for the frame); a short write is cut off first.
        """
        names = self._names.get((model, version, content_type, arm))
        if names is None:
            names = self._encode_names(model, version, content_type, arm)
        prefix, n_model, n_version, n_type, n_arm = names
        request = b"" if request_id is None else request_id.encode()
        head = _HEAD.pack(
            FORMAT, rid, ts, n_model, n_version, n_type, n_arm,
            0 if request_id is None else len(request) + 1,
            -1 if answer is None else len(answer), len(body),
        )  # fmt: skip
        strings = prefix + request
        crc = zlib.crc32(body, zlib.crc32(strings, zlib.crc32(head)))
        parts = [b"", head, strings, body]
        if answer:
            crc = zlib.crc32(answer, crc)
            parts.append(answer)
        length = len(head) + len(strings) + len(body) + (len(answer) if answer else 0)
        parts[0] = _FRAME.pack(length, crc)
        segment = self._current if self._current is not None else self._start_segment(ts)
        assert segment.fd is not None
        written = os.writev(segment.fd, parts)
        if written != length + _FRAME.size:
            self._cut(segment)
            raise OSError(errno.ENOSPC, "short write to the inference journal")
        start = segment.size
        segment.size += written
        segment.dirty = True
        self.appended += 1
        self.last_append = ts
        if segment.size >= self.segment_bytes:
            self.seal()
        return segment.seq, start, segment.size

    def _encode_names(
        self, model: str, version: str, content_type: str, arm: str
    ) -> tuple[bytes, int, int, int, int]:
        """The encoded names of a deployment's calls, made once (bounded: a few per key)."""
        if len(self._names) >= 1024:
            self._names.clear()
        parts = (model.encode(), version.encode(), content_type.encode(), arm.encode())
        names = (b"".join(parts), len(parts[0]), len(parts[1]), len(parts[2]), len(parts[3]))
        self._names[(model, version, content_type, arm)] = names
        return names

    def _start_segment(self, ts: float) -> _Segment:
        seq = self._next_seq
        fd = os.open(
            self.directory / segment_name(seq),
            os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
            0o600,
        )
        self._next_seq += 1
        segment = _Segment(seq, 0, fd, started=ts)
        self._segments[seq] = segment
        self._current = segment
        self._new_entries = True
        return segment

    def _cut(self, segment: _Segment) -> None:
        """After a short write: drop its bytes, or leave the segment for a new one."""
        assert segment.fd is not None
        try:
            os.ftruncate(segment.fd, segment.size)
        except OSError:
            # Reading stops at the torn frame, so nothing may follow it in this file.
            self.seal()

    def seal(self) -> None:
        """No more appends to the current segment; the next append starts a new one."""
        if self._current is not None:
            self._current.sealed = True
            self._current = None

    def current_started(self) -> float | None:
        """When the segment appends go to got its first frame; None if there is none."""
        return None if self._current is None else self._current.started

    def save_counters(self, lost: int, held: int) -> None:
        """Overwrite the counters in place: one small write, on a full disk too."""
        if self._counters_fd is None:
            return
        pair = struct.pack("<QQ", lost, held)
        os.pwrite(self._counters_fd, pair + struct.pack("<I", zlib.crc32(pair)), 0)
        self._counters_dirty = True

    # ------------------------------------------------------- worker threads

    def needs_sync(self) -> bool:
        """Whether `sync` has anything to do (cheap; on the loop)."""
        # Snapshots (tuple() of a dict view is one step under the GIL): worker threads
        # remove entries while the loop iterates, and the loop adds while they do.
        if any(s.sealed and s.fd is not None for s in tuple(self._segments.values())):
            return True
        if self.fsync == "never":
            return False
        current = self._current
        return self._counters_dirty or self._new_entries or (current is not None and current.dirty)

    def sync(self) -> None:
        """Blocking. fdatasync what was appended (unless `never`); close sealed segments."""
        with self._io:
            for segment in [s for s in tuple(self._segments.values()) if s.fd is not None]:
                assert segment.fd is not None
                if self.fsync != "never" and segment.dirty:
                    segment.dirty = False  # first: an append during the sync marks it again
                    os.fdatasync(segment.fd)
                if segment.sealed:
                    os.close(segment.fd)
                    segment.fd = None
            if self.fsync == "never":
                return
            if self._new_entries:
                # A new file's name is on disk only once its directory is synced.
                self._new_entries = False
                fd = os.open(self.directory, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            if self._counters_dirty and self._counters_fd is not None:
                self._counters_dirty = False
                os.fdatasync(self._counters_fd)

    def removable(self, done: tuple[int, int], everything: bool) -> list[int]:
        """Sealed segments whose calls are all stored (on the loop).

        `done` is where the stored calls reach, in journal order; `everything`: no
        call is waiting at all, so every sealed segment is done.
        """
        return [
            s.seq for s in tuple(self._segments.values())
            if s.sealed and (everything or (s.seq, s.size) <= done)
        ]  # fmt: skip

    def remove(self, seq: int) -> None:
        """Blocking. Delete a sealed segment (its calls are in the store)."""
        with self._io:
            segment = self._segments.get(seq)
            if segment is None or not segment.sealed:
                return
            if segment.fd is not None:
                os.close(segment.fd)
                segment.fd = None
            (self.directory / segment_name(seq)).unlink(missing_ok=True)
            del self._segments[seq]

    def read(self, seq: int, start: int, stop: int, limit: int) -> tuple[list[Call], int, bool]:
        """Blocking. Up to `limit` calls of segment `seq` in bytes [start, stop).

        Returns the calls, where the next unread frame starts, and whether a damaged
        frame (a torn tail) ended the read; then the segment is cut back to its whole
        frames and nothing past that point is left to read.
        """
        calls: list[Call] = []
        path = self.directory / segment_name(seq)
        pos = start
        try:
            with open(path, "rb", buffering=_READ_BUFFER) as f:
                f.seek(start)
                while pos < stop and len(calls) < limit:
                    head = f.read(_FRAME.size)
                    if len(head) < _FRAME.size:
                        break
                    length, crc = _FRAME.unpack(head)
                    if length < _HEAD.size or pos + _FRAME.size + length > stop:
                        break
                    payload = f.read(length)
                    if len(payload) < length or zlib.crc32(payload) != crc:
                        break
                    try:
                        calls.append(_decode(payload, seq, pos + _FRAME.size + length))
                    except (ValueError, UnicodeDecodeError, struct.error):
                        break
                    pos += _FRAME.size + length
                else:
                    return calls, pos, False
        except FileNotFoundError:
            logger.error("journal segment %s is gone; its unread calls are lost", path)
            return calls, pos, True
        self._cut_damaged(seq, pos)
        return calls, pos, True

    def _cut_damaged(self, seq: int, pos: int) -> None:
        segment = self._segments.get(seq)
        if segment is None or not segment.earlier:
            return  # only an earlier process's segment is cut; ours are never torn
        path = self.directory / segment_name(seq)
        logger.warning(
            "journal segment %s has a damaged frame at byte %d (%d bytes dropped): a write"
            " cut short by a crash",
            path, pos, segment.size - pos,
        )  # fmt: skip
        os.truncate(path, pos)
        segment.size = pos
