"""Built-in access control: bearer tokens and htpasswd (bcrypt) Basic credentials.

Off unless a token or an htpasswd file is configured. Routes fall in four
classes: open (`/health`, the OpenAPI document and docs), metrics (open unless
GATEWAY_METRICS_AUTH), inference (GATEWAY_INFERENCE_TOKEN, or the admin token)
and admin (everything else: GATEWAY_ADMIN_TOKEN). Valid Basic credentials pass
both inference and admin routes, as the original's nginx accounts did.
Comparisons are constant-time; bcrypt verdicts are cached by a digest of the
credentials, so a hot client pays one hash once.

Bad credentials must not be a cheap way to hurt the gateway: bcrypt runs in a
small pool of its own (a flood never starves the default thread pool that
exports, reports and the log writer share), with a bound on checks waiting; an
unknown user is checked against a dummy hash of the same cost (it answers no
faster than a known one: no user enumeration by timing); and an address that
keeps failing backs off (429 at once, no bcrypt) while valid tokens and
already verified credentials still pass, since many users may share an
address behind a proxy.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from enum import Enum
from pathlib import Path

import bcrypt
from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware

from gateway.edge.auth_backoff import FailureBackoff
from gateway.errors import Forbidden, TooManyRequests, Unauthorized

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


CheckPassword = Callable[[bytes, bytes], bool]
_COST = re.compile(rb"\$2[aby]\$(\d\d)\$")


def dummy_hash(users: dict[str, bytes]) -> bytes:
    """A bcrypt hash of a random password, at the highest cost the users' hashes have."""
    costs = [int(m.group(1)) for h in users.values() if (m := _COST.match(h))]
    rounds = max(costs, default=12)
    return bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(rounds=rounds))


class Authenticator:
    """Decides whether a request may reach its route."""

    CACHE_SECONDS = 300.0
    BCRYPT_THREADS = 2
    # Checks waiting for a bcrypt thread; more get 429 at once instead of queueing.
    MAX_WAITING_CHECKS = 32

    def __init__(
        self,
        admin_token: str | None,
        inference_token: str | None,
        htpasswd: dict[str, bytes] | None,
        metrics_need_auth: bool,
        *,
        checkpw: CheckPassword = bcrypt.checkpw,
        backoff: FailureBackoff | None = None,
    ) -> None:
        self._admin = admin_token.encode() if admin_token else None
        self._inference = inference_token.encode() if inference_token else None
        self._users = htpasswd or {}
        self._metrics_need_auth = metrics_need_auth
        self._verified: dict[bytes, float] = {}
        self._checkpw = checkpw
        self._backoff = backoff or FailureBackoff()
        # Made once at start-up (one hash: tenths of a second), only when there are users.
        self._dummy = dummy_hash(self._users) if self._users else b""
        self._pool: ThreadPoolExecutor | None = None
        self._checks = 0  # running or waiting for a bcrypt thread

    def close(self) -> None:
        """Let the bcrypt threads go (they finish the check they are on)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

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
        await self.check_header(request.headers.get(hdrs.AUTHORIZATION, ""), request.remote, scope)

    async def check_header(self, header: str, remote: str | None, scope: Scope) -> None:
        """`check` for what a request carries: its Authorization header and its address
        (the inference lane has no aiohttp request)."""
        if not self._protected(scope):
            return
        kind, _, value = header.partition(" ")
        kind = kind.lower()
        address = remote or ""
        if kind == "bearer" and value:
            token = value.strip().encode()
            if self._admin and hmac.compare_digest(token, self._admin):
                return
            if self._inference and hmac.compare_digest(token, self._inference):
                if scope is Scope.INFERENCE:
                    return
                raise Forbidden("the inference token does not grant management access")
            self._refuse_if_backing_off(address)
            self._backoff.failed(address)
            raise Unauthorized("the bearer token is not valid", headers=self._challenge())
        if kind == "basic" and value and self._users:
            if await self._basic_ok(value.strip(), address):
                self._backoff.succeeded(address)
                return
            self._backoff.failed(address)
            raise Unauthorized("the user name or password is not valid", headers=self._challenge())
        raise Unauthorized(
            "this endpoint needs credentials: Authorization: Bearer <token>"
            + (" or HTTP Basic" if self._users else ""),
            headers=self._challenge(),
        )

    def _refuse_if_backing_off(self, address: str) -> None:
        wait = self._backoff.retry_after(address)
        if wait:
            raise TooManyRequests(
                f"too many failed credentials from this address; try again in {wait} s",
                headers={"Retry-After": str(wait)},
            )

    async def _basic_ok(self, encoded: str, address: str) -> bool:
        try:
            user, sep, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            user, sep, password = "", "", ""
        digest = hashlib.sha256(f"{user}\0{password}".encode()).digest()
        now = time.monotonic()
        if sep and self._verified.get(digest, 0.0) > now:
            return True  # verified before: no bcrypt, back-off or not
        self._refuse_if_backing_off(address)
        if not sep:
            return False
        # An unknown user costs the same bcrypt check as a known one.
        hashed = self._users.get(user)
        ok = await self._bcrypt(password.encode(), hashed or self._dummy) and hashed is not None
        if ok:
            if len(self._verified) > 10_000:
                self._verified.clear()
            self._verified[digest] = now + self.CACHE_SECONDS
        return ok

    async def _bcrypt(self, password: bytes, hashed: bytes) -> bool:
        """One bcrypt check in the dedicated pool, or 429 when too many wait for it."""
        if self._checks >= self.MAX_WAITING_CHECKS:
            raise TooManyRequests(
                "too many credential checks in progress; try again shortly",
                headers={"Retry-After": "1"},
            )
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.BCRYPT_THREADS, thread_name_prefix="bcrypt")
        self._checks += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._pool, self._checkpw, password, hashed)
        finally:
            self._checks -= 1


ScopeOf = Callable[[web.Request], Scope]


def auth_middleware(authenticator: Authenticator, scope_of: ScopeOf) -> Middleware:
    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        await authenticator.check(request, scope_of(request))
        return await handler(request)

    return middleware
