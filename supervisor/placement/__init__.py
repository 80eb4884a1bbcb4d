"""Where backends run, behind one small contract (`base.Placement`).

`local` runs each backend as a child process on a reserved local port (the
default); `ray` runs each as a detached actor on a node of a Ray cluster
(`ray.py`, which imports Ray, so it is imported only when chosen). Both
implement the same contract; the manager's state machine, probes and backoff
never learn which one they drive.
"""

from supervisor.placement.base import BackendHandle, Placement

__all__ = ["BackendHandle", "Placement"]
