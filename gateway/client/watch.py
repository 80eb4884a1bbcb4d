"""A blocking management call watched live: the call runs on a thread while the
main thread polls `/get_deployed_models` and redraws the key's replica states.

The gateway's deploy and scale calls answer only once the deployment is ready
(or failed), so this is how a terminal shows progress without an async API.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.client.render import StatusLine, replica_summary
from gateway.client.transport import ApiError, ClientFailure, GatewayClient, Reply, Target


@dataclass
class Outcome:
    """The call's reply, or None when the watch stopped at `stop_when_listed` first."""

    reply: Reply | None
    entry: dict[str, Any] | None  # the key's last polled entry
    elapsed: float


class _Call(threading.Thread):
    def __init__(self, call: Callable[[], Reply]) -> None:
        # A daemon: `deploy` without --wait may leave while the call is still in
        # flight, and the gateway goes on deploying (it does not cancel on hang-up).
        super().__init__(daemon=True, name="modelgw-call")
        self._call = call
        self.reply: Reply | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            self.reply = self._call()
        except BaseException as exc:  # handed to the main thread, which raises it
            self.error = exc
        finally:
            self.done.set()


def watch_call(
    call: Callable[[], Reply],
    *,
    target: Target,
    key: str,
    label: str,
    status: StatusLine,
    interval: float = 0.5,
    stop_when_listed: bool = False,
) -> Outcome:
    """Run `call`, showing `key`'s replicas every `interval` seconds until it answers.

    With `stop_when_listed`, return as soon as the key is listed (the call goes on
    in the gateway). The call's ApiError or ClientFailure is raised here.
    """
    started = time.monotonic()
    worker = _Call(call)
    worker.start()
    entry: dict[str, Any] | None = None
    with GatewayClient(target, timeout=max(interval * 4, 5.0)) as poller:
        try:
            while not worker.done.wait(interval):
                entry = _poll(poller, key, entry)
                summary, state = replica_summary(entry)
                status.update(f"{label} {key}: {time.monotonic() - started:.0f}s, {summary}", state)
                if stop_when_listed and entry is not None:
                    return Outcome(None, entry, time.monotonic() - started)
        finally:
            status.clear()
        if worker.error is not None:
            raise worker.error
        entry = _poll(poller, key, entry)
    return Outcome(worker.reply, entry, time.monotonic() - started)


def _poll(poller: GatewayClient, key: str, last: dict[str, Any] | None) -> dict[str, Any] | None:
    """The key's entry now; the last one seen when this poll fails (it is only a display)."""
    try:
        deployed = poller.get("/get_deployed_models").json()
    except (ApiError, ClientFailure):
        return last
    entry = deployed.get(key) if isinstance(deployed, dict) else None
    return entry if isinstance(entry, dict) else None
