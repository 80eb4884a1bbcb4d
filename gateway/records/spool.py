"""A local overflow file for inference records the store cannot take yet.

Records are written as JSON lines, one file per spill, and replayed oldest
first once the store is back; a file is deleted only after its records are in.
A spill is written to a `.partial` file first and renamed when whole; a failed
write (a full disk) removes its partial file, and partial files an earlier
process left behind (killed mid-write) are removed at start: they hold no
record that was counted as spooled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
from pathlib import Path

from gateway.records.stores.base import InferenceRecord

logger = logging.getLogger(__name__)


class Spool:
    """A directory of `spool-<ns>.jsonl` files. Methods block: call them in a thread."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def write(self, records: list[InferenceRecord]) -> Path:
        """Write `records` durably (fsync) or raise OSError (e.g. a full disk)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.directory / f"spool-{time.time_ns()}.jsonl"
        partial = final.with_suffix(".partial")
        try:
            with open(partial, "w", encoding="utf-8") as f:
                for record in records:
                    f.write(json.dumps(dataclasses.asdict(record)))
                    f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            partial.rename(final)  # a file is either whole or absent
        except BaseException:
            # The records were not kept (the caller counts them lost): neither is
            # the partial file, which would only hold disk space a full disk lacks.
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)
            raise
        return final

    def recover(self) -> list[Path]:
        """At start: drop partial files of an earlier process, list whole ones."""
        if self.directory.is_dir():
            for partial in self.directory.glob("spool-*.partial"):
                with contextlib.suppress(OSError):
                    partial.unlink()
                    logger.warning("removed %s, left by an interrupted spool write", partial)
        return self.files()

    def files(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(self.directory.glob("spool-*.jsonl"))

    def read(self, path: Path) -> list[InferenceRecord]:
        with open(path, encoding="utf-8") as f:
            return [InferenceRecord(**json.loads(line)) for line in f if line.strip()]

    def remove(self, path: Path) -> None:
        path.unlink(missing_ok=True)
