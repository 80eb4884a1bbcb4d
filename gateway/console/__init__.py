"""The web console at /ui/: a single page (static files of this package) over the
management API, plus the small JSON helpers it needs."""

from gateway.console.routes import OPEN_HANDLERS, add_routes

__all__ = ["OPEN_HANDLERS", "add_routes"]
