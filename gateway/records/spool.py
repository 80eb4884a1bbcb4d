"""What releases before the journal left in `<data dir>/spool/`: read once, then deleted.

Those releases spilled records to JSON-lines files there while the store was down.
Nothing writes spool files any more (journal.py keeps every call instead); the log
writer replays any it finds at start, so an upgrade loses none of them. Partial files
(a spill interrupted by a crash) held no record that was counted as kept: removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path

from gateway.records.stores.base import InferenceRecord, Store

logger = logging.getLogger(__name__)


class Spool:
    """A directory of `spool-<ns>.jsonl` files. Methods but `replay` block: use a thread."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def recover(self) -> list[Path]:
        """At start: drop partial files, list whole ones, oldest first."""
        if not self.directory.is_dir():
            return []
        for partial in self.directory.glob("spool-*.partial"):
            with contextlib.suppress(OSError):
                partial.unlink()
                logger.warning("removed %s, left by an interrupted spool write", partial)
        return sorted(self.directory.glob("spool-*.jsonl"))

    def read(self, path: Path) -> list[InferenceRecord]:
        with open(path, encoding="utf-8") as f:
            return [InferenceRecord(**json.loads(line)) for line in f if line.strip()]

    def remove(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    async def replay(self, path: Path, store: Store, batch_size: int) -> int:
        """Store one file's records and delete it: how many. Store errors propagate
        (the file stays, and is replayed whole again: ids make that idempotent)."""
        try:
            records = await asyncio.to_thread(self.read, path)
        except (ValueError, TypeError) as exc:
            # Never retry a damaged file forever; keep it aside for a person.
            logger.error("spool file %s is damaged (%s); set aside", path, exc)
            await asyncio.to_thread(path.rename, path.with_suffix(".damaged"))
            return 0
        for i in range(0, len(records), batch_size):
            await store.insert_records(records[i : i + batch_size])
        await asyncio.to_thread(self.remove, path)
        logger.info("replayed %d records of an earlier release's spool", len(records))
        return len(records)
