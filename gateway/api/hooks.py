"""POST /hooks/mlflow: MLflow registry webhooks, verified by their HMAC signature.

MLflow signs `{delivery_id}.{timestamp}.{body}` with HMAC-SHA256 and the
webhook's secret and sends `X-MLflow-Signature: v1,<base64>`. A call is
accepted only when the signature matches, its timestamp is recent, and its
delivery id was not seen before (a captured call cannot be replayed).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections import OrderedDict
from collections.abc import Mapping

from aiohttp import web

from gateway.app_keys import ALIASES, SETTINGS
from gateway.edge.params import read_body
from gateway.errors import BadRequest, Unauthorized

SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_HEADER = "X-MLflow-Delivery-Id"
# A signed call older (or further in the future) than this is refused.
MAX_AGE_SECONDS = 300
_MAX_REMEMBERED = 10_000


class ReplayGuard:
    """Delivery ids seen within the accepted age, oldest first (bounded)."""

    def __init__(self) -> None:
        self._seen: OrderedDict[str, float] = OrderedDict()

    def first_time(self, delivery_id: str, now: float) -> bool:
        while self._seen and (
            len(self._seen) > _MAX_REMEMBERED
            or now - next(iter(self._seen.values())) > 2 * MAX_AGE_SECONDS
        ):
            self._seen.popitem(last=False)
        if delivery_id in self._seen:
            return False
        self._seen[delivery_id] = now
        return True


REPLAY_GUARD = web.AppKey("webhook_replay_guard", ReplayGuard)


def signature(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """MLflow's webhook signature of a call (`v1,<base64 HMAC-SHA256>`)."""
    signed = delivery_id.encode() + b"." + timestamp.encode() + b"." + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(
    secret: str | None, headers: Mapping[str, str], body: bytes, now: float, guard: ReplayGuard
) -> None:
    """Raise Unauthorized unless the call is signed with `secret`, fresh and new."""
    if not secret:
        raise Unauthorized("webhooks are off: set GATEWAY_WEBHOOK_SECRET to the webhook's secret")
    given = headers.get(SIGNATURE_HEADER)
    timestamp = headers.get(TIMESTAMP_HEADER, "")
    delivery_id = headers.get(DELIVERY_HEADER, "")
    if not given or not timestamp or not delivery_id:
        raise Unauthorized(
            f"an MLflow webhook call carries {SIGNATURE_HEADER}, {TIMESTAMP_HEADER}"
            f" and {DELIVERY_HEADER}"
        )
    if not hmac.compare_digest(given.encode(), signature(secret, delivery_id, timestamp,
                                                          body).encode()):  # fmt: skip
        raise Unauthorized("the webhook signature does not match")
    try:
        sent = int(timestamp)
    except ValueError:
        raise Unauthorized("the webhook timestamp is not a number") from None
    if abs(now - sent) > MAX_AGE_SECONDS:
        raise Unauthorized("the webhook call is too old (or from the future): refused")
    if not guard.first_time(delivery_id, now):
        raise Unauthorized("this webhook delivery was already received: refused as a replay")


async def mlflow_webhook(request: web.Request) -> web.Response:
    """Follow an alias change at once; other events are acknowledged and ignored."""
    body = await read_body(request)
    secret = request.app[SETTINGS].webhook_secret
    verify(
        secret.get_secret_value() if secret else None,
        request.headers,
        body,
        time.time(),
        request.app[REPLAY_GUARD],
    )
    try:
        event = json.loads(body)
    except (ValueError, RecursionError):
        raise BadRequest("the webhook body is not JSON") from None
    if not isinstance(event, dict):
        raise BadRequest("the webhook body must be a JSON object")
    data = event.get("data")
    if not isinstance(data, dict):
        data = {}
    following: list[str] = []
    if event.get("entity") == "model_version_alias" and event.get("action") in (
        "created",
        "deleted",
    ):
        name, alias = data.get("name"), data.get("alias")
        if not isinstance(name, str) or not isinstance(alias, str):
            raise BadRequest("an alias event names the model and the alias")
        following = request.app[ALIASES].nudge(name, alias)
    return web.json_response({"accepted": True, "following": following})


def add_routes(app: web.Application) -> None:
    app[REPLAY_GUARD] = ReplayGuard()
    app.router.add_post("/hooks/mlflow", mlflow_webhook)
