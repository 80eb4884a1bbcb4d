"""Built-in access control: bearer tokens and htpasswd (bcrypt) Basic credentials.

Off unless a token or an htpasswd file is configured. Routes fall in four
classes: open (`/health`, the OpenAPI document and docs), metrics (open unless
GATEWAY_METRICS_AUTH), inference (GATEWAY_INFERENCE_TOKEN, or the admin token)
and admin (everything else: GATEWAY_ADMIN_TOKEN). Valid Basic credentials pass
both inference and admin routes, as the original's nginx accounts did.
Comparisons are constant-time; bcrypt runs in a thread and its verdicts are
cached by a digest of the credentials, so a hot client pays one hash once.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from enum import Enum
from pathlib import Path

from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware

from gateway.errors import Forbidden, Unauthorized

logger = logging.getLogger(__name__)


class Scope(Enum):
    OPEN = "open"
    METRICS = "metrics"
    INFERENCE = "inference"
    ADMIN = "admin"


def load_htpasswd(path: Path) -> dict[str, bytes]:
    """`user:bcrypt-hash` lines; other hash kinds are refused at start-up."""
    users: dict[str, bytes] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if not sep or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            raise ValueError(f"{path}:{number}: only bcrypt entries are supported (htpasswd -B)")
        users[user] = hashed.encode()
    return users


class Authenticator:
    """Decides whether a request may reach its route."""

    CACHE_SECONDS = 300.0

    def __init__(
        self,
        admin_token: str | None,
        inference_token: str | None,
        htpasswd: dict[str, bytes] | None,
        metrics_need_auth: bool,
    ) -> None:
        self._admin = admin_token.encode() if admin_token else None
        self._inference = inference_token.encode() if inference_token else None
        self._users = htpasswd or {}
        self._metrics_need_auth = metrics_need_auth
        self._verified: dict[bytes, float] = {}

    @property
    def enabled(self) -> bool:
        return bool(self._admin or self._inference or self._users)

    def _protected(self, scope: Scope) -> bool:
        if scope is Scope.OPEN:
            return False
        if scope is Scope.METRICS:
            return self._metrics_need_auth and bool(self._admin or self._users)
        if scope is Scope.INFERENCE:
            # Each token guards its own class: an admin token alone leaves inference open.
            return bool(self._inference or self._users)
        return bool(self._admin or self._users)

    def _challenge(self) -> dict[str, str]:
        challenges = ['Bearer realm="modelgw"']
        if self._users:
            challenges.append('Basic realm="modelgw"')
        return {hdrs.WWW_AUTHENTICATE: ", ".join(challenges)}

    async def check(self, request: web.Request, scope: Scope) -> None:
        if not self._protected(scope):
            return
        header = request.headers.get(hdrs.AUTHORIZATION, "")
        kind, _, value = header.partition(" ")
        kind = kind.lower()
        if kind == "bearer" and value:
            token = value.strip().encode()
            if self._admin and hmac.compare_digest(token, self._admin):
                return
            if self._inference and hmac.compare_digest(token, self._inference):
                if scope is Scope.INFERENCE:
                    return
                raise Forbidden("the inference token does not grant management access")
            raise Unauthorized("the bearer token is not valid", headers=self._challenge())
        if kind == "basic" and value and self._users:
            if await self._basic_ok(value.strip()):
                return
            raise Unauthorized("the user name or password is not valid", headers=self._challenge())
        raise Unauthorized(
            "this endpoint needs credentials: Authorization: Bearer <token>"
            + (" or HTTP Basic" if self._users else ""),
            headers=self._challenge(),
        )

    async def _basic_ok(self, encoded: str) -> bool:
        try:
            user, sep, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        if not sep:
            return False
        digest = hashlib.sha256(f"{user}\0{password}".encode()).digest()
        now = time.monotonic()
        if self._verified.get(digest, 0.0) > now:
            return True
        hashed = self._users.get(user)
        if hashed is None:
            return False
        import bcrypt

        ok = await asyncio.to_thread(bcrypt.checkpw, password.encode(), hashed)
        if ok:
            if len(self._verified) > 10_000:
                self._verified.clear()
            self._verified[digest] = now + self.CACHE_SECONDS
        return ok


ScopeOf = Callable[[web.Request], Scope]


def auth_middleware(authenticator: Authenticator, scope_of: ScopeOf) -> Middleware:
    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        await authenticator.check(request, scope_of(request))
        return await handler(request)

    return middleware
