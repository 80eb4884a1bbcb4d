"""Command factories that run inside Ray actors on the test cluster's nodes.

Ray pickles them by reference, so a node imports this module: it stays light
(no pytest, no test fixtures).
"""

from __future__ import annotations

import sys
from pathlib import Path

from supervisor.process import Command
from supervisor.state_store import DeploymentRecord

FAKE = str(Path(__file__).resolve().parent.parent / "fake_backend.py")


async def fake_command(record: DeploymentRecord, port: int, host: str) -> Command:
    """The fake backend in the mode the record's options name (ready | exit | stubborn)."""
    return Command([sys.executable, FAKE, str(port), record.options["mode"], host])
