"""Errors raised by the supervisor. The gateway maps them to HTTP statuses."""

from __future__ import annotations


class SupervisorError(Exception):
    """Base class of every error the supervisor raises on purpose."""


class NoFreePort(SupervisorError):
    """Every port of the configured range is reserved or held by another process."""


class BackendStartError(SupervisorError):
    """A backend exited or missed its readiness deadline while starting.

    `log_tail` carries the last lines the child wrote, so the caller can see why.
    """

    def __init__(self, message: str, log_tail: str = "") -> None:
        super().__init__(message)
        self.log_tail = log_tail


class NotDeployed(SupervisorError):
    """The key has no deployment."""


class InvalidTransition(SupervisorError):
    """A state change the state machine does not allow (a bug, never a user error)."""
