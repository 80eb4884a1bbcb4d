"""bench/run.py's helpers, for the soak to reuse rather than copy.

run.py is also a script that imports its siblings (`cpu`) by bare name, so this
directory goes on sys.path before it is imported as `bench.run`.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench.run import REPO, bodies, free_port

__all__ = ["REPO", "bodies", "free_port"]
