"""One small blocking HTTP client for the gateway's API (http.client, keep-alive).

A command-line client has no event loop to protect, so blocking calls are the
simple and right choice here. Errors come back as two types: `ApiError` when the
gateway answered with an error status, `ClientFailure` when it could not be
reached or answered nonsense; both carry a one-line message for stderr.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

DEFAULT_URL = "http://127.0.0.1:8000"


class ClientFailure(Exception):
    """The call did not get an answer from the gateway (or one we can read)."""


class ApiError(Exception):
    """The gateway answered with an error status and its `{"error", "detail"}` body."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail

    def __str__(self) -> str:
        head, _, _ = self.detail.partition("\n")
        return f"{head} (HTTP {self.status} {self.code})"


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            raise ClientFailure(
                f"the gateway answered {self.status} with a body that is not JSON"
            ) from None


@dataclass(frozen=True)
class Target:
    """Where the gateway is and how to prove who we are (from the environment)."""

    url: str
    authorization: str | None = None

    @classmethod
    def from_env(
        cls, env: Mapping[str, str], url: str | None = None, inference: bool = False
    ) -> Target:
        """`GATEWAY_URL`; `GATEWAY_ADMIN_TOKEN` as a bearer token (for inference,
        `GATEWAY_INFERENCE_TOKEN` when no admin token is set), else HTTP Basic from
        `GATEWAY_USER`/`GATEWAY_PASSWORD` (an htpasswd account, as nginx in front wants).
        Credentials never come from a flag, so they never show in `ps`."""
        token = env.get("GATEWAY_ADMIN_TOKEN") or (
            env.get("GATEWAY_INFERENCE_TOKEN") if inference else None
        )
        authorization = None
        if token:
            authorization = f"Bearer {token}"
        elif env.get("GATEWAY_USER") and env.get("GATEWAY_PASSWORD") is not None:
            pair = f"{env['GATEWAY_USER']}:{env['GATEWAY_PASSWORD']}".encode()
            authorization = "Basic " + base64.b64encode(pair).decode()
        return cls((url or env.get("GATEWAY_URL") or DEFAULT_URL).rstrip("/"), authorization)


def path(*segments: str, **query: object) -> str:
    """`/a/b?x=1` with each segment percent-quoted and None-valued query items left out."""
    joined = "/" + "/".join(quote(s, safe="@") for s in segments)
    items = {k: v for k, v in query.items() if v is not None}
    return f"{joined}?{urlencode(items)}" if items else joined


class GatewayClient:
    """Calls to one gateway over one keep-alive connection (not shared across threads)."""

    def __init__(self, target: Target, timeout: float) -> None:
        parts = urlsplit(target.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ClientFailure(
                f"GATEWAY_URL must look like http://host:port or https://host, got {target.url!r}"
            )
        self.target = target
        self.timeout = timeout
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def get(self, path: str) -> Reply:
        return self.call("GET", path)

    def post(self, path: str, body: bytes = b"", content_type: str | None = None) -> Reply:
        return self.call("POST", path, body, content_type)

    def call(
        self, method: str, path: str, body: bytes | None = None, content_type: str | None = None
    ) -> Reply:
        """Send one request; an error status raises ApiError, no answer raises ClientFailure."""
        headers = {"Accept": "application/json"}
        if content_type is not None:
            headers["Content-Type"] = content_type
        if self.target.authorization is not None:
            headers["Authorization"] = self.target.authorization
        reused = self._conn is not None
        try:
            reply = self._send(method, path, body, headers)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            self.close()
            # A kept-alive connection the server closed while idle: a GET is safe to send
            # again; a POST might have been received, so it is not repeated.
            if not (reused and method == "GET"):
                raise ClientFailure(
                    f"the gateway at {self.target.url} closed the connection"
                ) from None
            reply = self._retry(method, path, body, headers)
        if reply.status >= 400:
            raise _api_error(reply)
        return reply

    def _retry(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> Reply:
        try:
            return self._send(method, path, body, headers)
        except (http.client.HTTPException, OSError):
            self.close()
            raise ClientFailure(f"the gateway at {self.target.url} closed the connection") from None

    def _send(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> Reply:
        conn = self._connection()
        try:
            conn.request(method, self._prefix + path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            raise
        except ssl.SSLError as exc:
            self.close()
            raise ClientFailure(
                f"TLS with {self.target.url} failed: {exc.reason or exc}"
                " (a self-signed certificate: point SSL_CERT_FILE at it)"
            ) from None
        except TimeoutError:
            self.close()
            raise ClientFailure(
                f"no answer from {self.target.url} within {self.timeout:g}s (raise --timeout)"
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise ClientFailure(f"cannot reach the gateway at {self.target.url}: {_reason(exc)}"
                                " (set GATEWAY_URL or --url)") from None  # fmt: skip
        if resp.will_close:
            self.close()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._https:
                self._conn = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self.timeout,
                    context=ssl.create_default_context(),
                )  # fmt: skip
            else:
                self._conn = http.client.HTTPConnection(
                    self._host, self._port, timeout=self.timeout
                )
        return self._conn


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return "unknown host"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _api_error(reply: Reply) -> ApiError:
    """Our JSON error body when there is one; else (nginx's HTML pages) the status alone."""
    try:
        body = json.loads(reply.body)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        return ApiError(reply.status, str(body.get("error", "error")), body["detail"])
    reason = http.client.responses.get(reply.status, "error")
    return ApiError(reply.status, reason.lower().replace(" ", "_"), reason)
