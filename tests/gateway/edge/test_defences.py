"""Cheap denial of service, tried against a live gateway: none of it works.

One gateway with a small client-connection cap, a short idle timeout, access
control, and a low soft open-files limit inherited from its parent. Raw sockets
where the test is about connections; http.client where it is about answers.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import resource
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import bcrypt
import pytest

from gateway.edge.serving import RESERVED_FILES, connection_cap
from tests.conftest import RegistryInfo
from tests.support import Gateway, wait_until

CAP = 6
IDLE_S = 5
ADMIN = "defences-admin-token"
USER, PASSWORD = "carol", "a long passphrase"


@contextlib.contextmanager
def soft_open_files(limit: int) -> Iterator[None]:
    """Children started inside inherit a soft open-files limit of `limit`."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(limit, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture(scope="module")
def guarded(registry: RegistryInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    root = tmp_path_factory.mktemp("defences")
    htpasswd = root / "htpasswd"
    htpasswd.write_text(f"{USER}:{bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()}\n")
    gw = Gateway(
        root / "data",
        registry.tracking_uri,
        extra_env={
            "GATEWAY_MAX_CLIENT_CONNECTIONS": str(CAP),
            "GATEWAY_KEEPALIVE_TIMEOUT": str(IDLE_S),
            "GATEWAY_ADMIN_TOKEN": ADMIN,
            "GATEWAY_HTPASSWD": str(htpasswd),
        },
    )
    with soft_open_files(RESERVED_FILES + 2 * CAP + 64):
        gw.start()
    try:
        yield gw
    finally:
        gw.stop()


def log_of(gw: Gateway) -> Path:
    return gw.data_dir.parent / f"gateway-{gw.port}.log"


def read_answer(sock: socket.socket) -> bytes:
    """One HTTP answer (headers and a Content-Length body), or all until EOF."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (int(line.split(b":")[1]) for line in head.split(b"\r\n")
         if line.lower().startswith(b"content-length:")),
        0,
    )  # fmt: skip
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


HEALTH = b"GET /health HTTP/1.1\r\nHost: gw\r\n\r\n"


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")) else 0


Connect = Callable[[], socket.socket]


@pytest.fixture
def connect(guarded: Gateway) -> Iterator[Connect]:
    """Raw connections to the gateway, every one closed when the test ends."""
    opened: list[socket.socket] = []

    def new() -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", guarded.port), timeout=60)
        opened.append(sock)
        return sock

    yield new
    for sock in opened:
        sock.close()


def served(connect: Connect) -> socket.socket:
    """A connection that has been answered 200; connections of earlier tests may
    still be closing on the gateway's side, so one past the cap is retried."""

    def attempt() -> socket.socket | None:
        sock = connect()
        sock.sendall(HEALTH)
        if status_of(read_answer(sock)) == 200:
            return sock
        sock.close()
        return None

    sock: socket.socket = wait_until(attempt, 30, 0.1, "a connection under the cap")
    return sock


# ------------------------------------------------------------- open files


def test_the_soft_open_files_limit_is_raised_to_the_hard_limit(guarded: Gateway) -> None:
    assert guarded.proc is not None
    limits = Path(f"/proc/{guarded.proc.pid}/limits").read_text()
    line = next(line for line in limits.splitlines() if line.startswith("Max open files"))
    soft, hard = line.split()[3:5]
    assert soft == hard, line


def test_the_connection_cap_fits_the_open_files_limit() -> None:
    assert connection_cap(10_000, 1 << 20) == 10_000
    assert connection_cap(10_000, 1024) == (1024 - RESERVED_FILES) // 2
    assert connection_cap(5, 100) == 1  # never zero


# ------------------------------------------------------------ connections


def refused_count(sock: socket.socket) -> float:
    """`modelgw_refused_connections_total`, read over an open connection."""
    sock.sendall(
        b"GET /metrics HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer "
        + ADMIN.encode() + b"\r\n\r\n"
    )  # fmt: skip
    answer = read_answer(sock)
    assert status_of(answer) == 200, answer[:200]
    for line in answer.decode().splitlines():
        if line.startswith("modelgw_refused_connections_total "):
            return float(line.split()[1])
    raise AssertionError("no modelgw_refused_connections_total in /metrics")


def test_connections_past_the_cap_are_refused_at_once_while_open_ones_are_served(
    connect: Connect,
) -> None:
    held = [served(connect) for _ in range(CAP)]
    refusals_before = refused_count(held[0])
    refused = connect()
    refused.sendall(HEALTH)
    answer = read_answer(refused)
    assert status_of(answer) == 503, answer
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"] == "service_unavailable"
    assert refused.recv(1) == b""  # and closed
    assert refused_count(held[0]) == refusals_before + 1  # counted in Prometheus
    for sock in held:  # the open ones are still served, on the same connections
        sock.sendall(HEALTH)
        assert status_of(read_answer(sock)) == 200
    held.pop().close()
    served(connect)  # the freed slot is taken by a new connection


def test_an_idle_connection_is_closed_after_the_keepalive_timeout(connect: Connect) -> None:
    kinds = {"never asked": b"", "slow": b"GET /health HTTP/1.1\r\nHost: gw\r\n"}

    def idle(first: bytes) -> socket.socket:
        sock = connect()
        sock.sendall(first)  # a slowloris's headers never end
        return sock

    opened = {kind: idle(first) for kind, first in kinds.items()}
    opened["asked once"] = served(connect)
    for kind, sock in opened.items():
        # The socket timeout (60 s) is far past the idle timeout: EOF, not a timeout.
        first = sock.recv(1)
        for _ in range(10):
            if first != b"H" or kind == "asked once":
                break
            # Refused at the cap while connections of the last test were closing.
            assert status_of(first + read_answer(sock)) == 503
            sock = idle(kinds[kind])
            first = sock.recv(1)
        assert first == b"", kind


# ------------------------------------------------------- malformed requests


def bearer() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN}"}


MALFORMED = [
    # The HTTP parser refuses these before any handler runs.
    b"POST /x-1 HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nabc\r\n0\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: gw\r\nBad Header: y\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: gw\r\nX: " + b"a" * 20_000 + b"\r\n\r\n",
    # A body that is not what its Content-Encoding says.
    b"PUT /model/x-1/reference HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer "
    + ADMIN.encode()
    + b"\r\nContent-Type: text/csv\r\nContent-Encoding: gzip\r\nContent-Length: 8\r\n\r\na,b\n1,2\n",
]


def test_malformed_requests_log_no_traceback_and_a_bounded_number_of_lines(
    guarded: Gateway, connect: Connect
) -> None:
    log = log_of(guarded)
    start = log.stat().st_size
    statuses = []
    for i in range(200):
        sock = connect()
        sock.sendall(MALFORMED[i % len(MALFORMED)])
        statuses.append(status_of(read_answer(sock)))
        sock.close()
    for _ in range(20):  # a body cut short: the client leaves mid-body
        sock = connect()
        sock.sendall(
            b"PUT /model/x-1/reference HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer "
            + ADMIN.encode() + b"\r\nContent-Length: 100\r\n\r\nabc"
        )  # fmt: skip
        sock.close()
    assert set(statuses) == {400}, statuses
    assert guarded.get("/health").status == 200

    def settled() -> str:
        time.sleep(0.5)  # the access log is flushed every 0.2 s
        return log.read_bytes()[start:].decode(errors="replace")

    text = settled()
    app_lines = [line for line in text.splitlines() if line and not line.startswith('{"time"')]
    assert "Traceback" not in text, text[:3000]
    assert any("malformed request" in line for line in app_lines), app_lines
    # 220 bad requests; at most a budget of lines per minute.
    assert len(app_lines) <= 30, app_lines
    assert all(len(line) < 400 for line in app_lines), app_lines


def test_bad_credentials_back_off_with_429(guarded: Gateway) -> None:
    wrong = {"Authorization": "Basic " + base64.b64encode(b"mallory:guess").decode()}
    statuses: list[int] = []
    while 429 not in statuses and len(statuses) < 40:
        statuses.append(guarded.get("/get_deployed_models", headers=wrong).status)
    assert statuses[:10] == [401] * 10, statuses
    assert statuses[-1] == 429 and set(statuses[:-1]) == {401}, statuses
    # The admin token still works from the same address.
    assert guarded.get("/get_deployed_models", headers=bearer()).status == 200


# ------------------------------------------------------------------ SIGTERM


def test_a_call_on_a_kept_alive_connection_just_after_sigterm_is_answered(
    registry: RegistryInfo, tmp_path: Path
) -> None:
    gw = Gateway(tmp_path / "data", registry.tracking_uri).start()
    assert gw.proc is not None
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=60)
    try:
        conn.request("GET", "/health")
        first = conn.getresponse()
        first.read()
        assert first.status == 200 and first.getheader("Connection") != "close"
        gw.proc.send_signal(signal.SIGTERM)

        def listener_closed() -> bool:
            try:
                socket.create_connection(("127.0.0.1", gw.port), timeout=5).close()
            except ConnectionRefusedError:
                return True
            return False

        # The gateway has begun to stop (it accepts no new connection), and a
        # call arrives on the connection it kept alive.
        wait_until(listener_closed, 30, 0.002, "the listener to close")
        conn.request("GET", "/health")
        answer = conn.getresponse()
        assert answer.status == 200, answer.read()
        assert answer.getheader("Connection") == "close"
        answer.read()
    finally:
        conn.close()
        assert gw.stop() == 0, gw.log()
