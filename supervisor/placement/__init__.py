"""Where backends run, behind one small contract (`base.Placement`).

`local` runs each backend as a child process on a reserved local port (the
default). Another placement (e.g. Ray actors on other hosts) implements the
same contract; the manager's state machine, probes and backoff never learn
which one they drive.
"""

from supervisor.placement.base import BackendHandle, Placement

__all__ = ["BackendHandle", "Placement"]
