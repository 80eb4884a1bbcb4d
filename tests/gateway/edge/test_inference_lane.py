"""The inference lane, tried on a live gateway over raw sockets.

Calls to a deployed key are served on the lane; anything else hands the connection to
aiohttp with the raw bytes from that request on. What is checked: the lane's answers are
the app's (status, body, headers, errors, ids, access log, metrics), answers leave in
order when requests are pipelined across the hand-off, what the lane leaves to aiohttp
(a management call, 100-continue, a chunked or compressed body, a too-large body, a
malformed message) is answered as before, and its connections are closed when idle
(a slowloris's head included) or given no body in time.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import bcrypt
import pytest

from tests.conftest import RegistryInfo
from tests.gateway.edge.test_operations import scrape, value
from tests.support import ONE_ROW, REPO, Gateway, wait_until

KEY = "wine-quality-1"
IDLE_S = 2
BODY_S = 1
MAX_BODY_KB = 16
BODY = json.dumps(ONE_ROW).encode()


# Backends that echo the body, or answer `big:N` with N bytes (tests/fake_backend.py).
FAKE_BACKEND = json.dumps([sys.executable, str(REPO / "tests" / "fake_backend.py"), "{port}"])


@contextlib.contextmanager
def serving(gw: Gateway, headers: dict[str, str] | None = None) -> Iterator[Gateway]:
    """`gw` started with KEY deployed (a 201 answers once it is ready), stopped after."""
    gw.start()
    try:
        deploy = gw.post(f"/deploy/{KEY.rsplit('-', 1)[0]}/1", headers=headers or {})
        assert deploy.status == 201, gw.log()
        yield gw
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def lane_gw(registry: RegistryInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = Gateway(
        tmp_path_factory.mktemp("lane") / "data",
        registry.tracking_uri,
        extra_env={
            "GATEWAY_KEEPALIVE_TIMEOUT": str(IDLE_S),
            "GATEWAY_BODY_TIMEOUT": str(BODY_S),
            "GATEWAY_MAX_BODY_MB": str(MAX_BODY_KB / 1024),
        },
    )
    with serving(gw):
        yield gw


Answer = tuple[int, dict[str, str], bytes]


class Client:
    """One raw connection, with a reader that keeps pipelined answers apart."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.file = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def answer(self) -> Answer:
        status_line = self.file.readline()
        assert status_line.startswith(b"HTTP/1."), status_line
        status = int(status_line.split()[1])
        headers: dict[str, str] = {}
        while (line := self.file.readline()) not in (b"\r\n", b""):
            name, _, val = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = val.strip()
        if status == 100:
            return status, headers, b""
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while size := int(self.file.readline().strip(), 16):
                body += self.file.read(size)
                self.file.readline()
            self.file.readline()
            return status, headers, body
        return status, headers, self.file.read(int(headers.get("content-length", "0")))

    def closed(self) -> bool:
        """Whether the gateway closed the connection (EOF, with nothing more sent)."""
        return self.file.read(1) == b""

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest.fixture
def client(lane_gw: Gateway) -> Iterator[Callable[[], Client]]:
    opened: list[Client] = []

    def connect() -> Client:
        opened.append(Client(lane_gw.port))
        return opened[-1]

    yield connect
    for c in opened:
        c.close()


def post(path: str = f"/{KEY}", body: bytes = BODY, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


HEALTH = b"GET /health HTTP/1.1\r\nHost: gw\r\n\r\n"


def lane_counts(gw: Gateway) -> tuple[float, float]:
    """(calls served on the lane, hand-offs); each scrape is a hand-off itself (a GET)."""
    samples = scrape(gw)
    return (
        value(samples, "modelgw_inference_lane_calls_total"),
        value(samples, "modelgw_inference_lane_handoffs_total"),
    )


def predictions(answer: Answer) -> Any:
    status, headers, body = answer
    assert status == 200, body
    assert headers["content-type"].startswith("application/json")
    return json.loads(body)["predictions"]


def test_the_lane_answers_as_aiohttp_does(lane_gw: Gateway, client: Callable[[], Client]) -> None:
    calls, handoffs = lane_counts(lane_gw)
    on_lane = client()
    on_lane.send(post(extra="X-Request-ID: lane-call-1\r\n"))
    lane_answer = on_lane.answer()
    # The same call after a hand-off: the router and aiohttp's objects serve it.
    via_aiohttp = client()
    via_aiohttp.send(HEALTH)
    assert via_aiohttp.answer()[0] == 200
    via_aiohttp.send(post(extra="X-Request-ID: aiohttp-call-1\r\n"))
    aiohttp_answer = via_aiohttp.answer()
    assert lane_counts(lane_gw) == (calls + 1, handoffs + 2)  # and this scrape's

    assert predictions(lane_answer) == predictions(aiohttp_answer)
    (_, lane_h, _), (_, http_h, _) = lane_answer, aiohttp_answer
    assert set(lane_h) == set(http_h), (lane_h, http_h)
    assert lane_h["x-request-id"] == "lane-call-1"
    assert http_h["x-request-id"] == "aiohttp-call-1"
    for name in ("content-type", "x-model-version", "server"):
        assert lane_h[name] == http_h[name], name
    # An id we do not pass on is replaced by one of ours, as aiohttp's road does.
    on_lane.send(post(extra="X-Request-ID: no spaces allowed\r\n"))
    _, headers, _ = on_lane.answer()
    assert headers["x-request-id"] != "no spaces allowed" and " " not in headers["x-request-id"]


def test_lane_errors_are_the_apps_json(lane_gw: Gateway, client: Callable[[], Client]) -> None:
    c = client()
    c.send(post(body=b'{"inputs": "not a table"'))  # the backend refuses it: its 4xx, our shape
    status, headers, body = c.answer()
    assert status == 400 and headers["content-type"] == "application/json", body
    assert set(json.loads(body)) >= {"error", "detail"}
    assert headers["x-model-version"] == "1"
    c.send(post())  # the connection is still the lane's and still served
    assert predictions(c.answer())


def test_answers_keep_their_order_across_the_hand_off(
    lane_gw: Gateway, client: Callable[[], Client]
) -> None:
    calls, handoffs = lane_counts(lane_gw)
    c = client()
    # One write: a lane call, a management call, and calls after it (aiohttp's now).
    c.send(post(extra="X-Request-ID: first\r\n") + HEALTH + post(extra="X-Request-ID: third\r\n")
           + post(f"/{KEY}/invocations", extra="X-Request-ID: fourth\r\n"))  # fmt: skip
    first, second, third, fourth = (c.answer() for _ in range(4))
    assert first[1]["x-request-id"] == "first" and predictions(first)
    assert second[0] == 200 and json.loads(second[2])["status"] == "ok"
    assert third[1]["x-request-id"] == "third" and predictions(third)
    assert fourth[1]["x-request-id"] == "fourth" and predictions(fourth)
    assert lane_counts(lane_gw) == (calls + 1, handoffs + 2)  # and this scrape's


def test_pipelined_lane_calls_are_answered_in_order(
    lane_gw: Gateway, client: Callable[[], Client]
) -> None:
    calls, _ = lane_counts(lane_gw)
    c = client()
    c.send(b"".join(post(extra=f"X-Request-ID: call-{i}\r\n") for i in range(40)))
    for i in range(40):
        answer = c.answer()
        assert answer[1]["x-request-id"] == f"call-{i}" and predictions(answer)
    assert lane_counts(lane_gw)[0] == calls + 40


def test_a_client_that_half_closes_gets_every_answer(
    lane_gw: Gateway, client: Callable[[], Client]
) -> None:
    c = client()
    c.send(b"".join(post(extra=f"X-Request-ID: eof-{i}\r\n") for i in range(3)))
    c.sock.shutdown(socket.SHUT_WR)  # as `nc -N` does: nothing more will be sent
    for i in range(3):
        answer = c.answer()
        assert answer[1]["x-request-id"] == f"eof-{i}" and predictions(answer)
    assert c.closed()


def test_what_the_lane_leaves_to_aiohttp_is_answered_as_before(
    lane_gw: Gateway, client: Callable[[], Client]
) -> None:
    c = client()
    c.send(post(extra="Expect: 100-continue\r\n")[: -len(BODY)])
    assert c.answer()[0] == 100
    c.send(BODY)
    assert predictions(c.answer())

    chunked = client()
    half = len(BODY) // 2
    chunked.send(
        f"POST /{KEY} HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        f"Transfer-Encoding: chunked\r\n\r\n{half:x}\r\n".encode() + BODY[:half]
        + f"\r\n{len(BODY) - half:x}\r\n".encode() + BODY[half:] + b"\r\n0\r\n\r\n"
    )  # fmt: skip
    assert predictions(chunked.answer())

    packed = gzip.compress(BODY)
    zipped = client()
    zipped.send(post(body=packed, extra="Content-Encoding: gzip\r\n"))
    assert predictions(zipped.answer())

    big = client()
    big.send(post(body=b" " * (MAX_BODY_KB * 1024 + 1)))
    status, _, body = big.answer()
    assert status == 413 and json.loads(body)["error"] == "payload_too_large", body

    unknown = client()
    unknown.send(post("/never-deployed-1"))
    status, _, body = unknown.answer()
    assert status == 404 and json.loads(body)["error"] == "deployment_not_found", body

    malformed = client()
    malformed.send(post() + b"POST /x HTTP/1.1\r\nBad Header: y\r\n\r\n")
    assert predictions(malformed.answer())
    assert malformed.answer()[0] == 400
    assert malformed.closed()


def test_lane_calls_are_counted_and_logged(lane_gw: Gateway, client: Callable[[], Client]) -> None:
    before = scrape(lane_gw)
    c = client()
    for i in range(5):
        c.send(post(extra=f"X-Request-ID: counted-{i}\r\n"))
        assert predictions(c.answer())
    after = scrape(lane_gw)
    assert value(after, "modelgw_requests_total", key=KEY, code="200") == (
        value(before, "modelgw_requests_total", key=KEY, code="200") + 5
    )
    log = lane_gw.data_dir.parent / f"gateway-{lane_gw.port}.log"

    def logged() -> list[dict[str, Any]]:
        lines = [json.loads(x) for x in log.read_text().splitlines() if x.startswith('{"time"')]
        return [x for x in lines if str(x["request_id"]).startswith("counted-")]

    entries = wait_until(lambda: len(logged()) == 5 and logged(), 10, what="5 access lines")
    for entry in entries:
        assert entry["method"] == "POST" and entry["path"] == f"/{KEY}"
        assert entry["key"] == KEY and entry["status"] == 200
        assert entry["bytes_in"] == len(BODY) and entry["bytes_out"] > 0
        assert entry["remote"] == "127.0.0.1"


def test_idle_and_slow_connections_are_closed(
    lane_gw: Gateway, client: Callable[[], Client]
) -> None:
    never = client()
    slowloris = client()
    slowloris.send(f"POST /{KEY} HTTP/1.1\r\nHost: gw\r\n".encode())  # the head never ends
    served = client()
    served.send(post())
    assert predictions(served.answer())
    stalled = client()
    stalled.send(post()[: -len(BODY) + 3])  # the body never ends
    status, headers, body = stalled.answer()
    assert status == 408 and json.loads(body)["error"] == "request_timeout", body
    assert headers["connection"] == "close" and stalled.closed()
    for c in (never, slowloris, served):  # socket timeout 30 s, far past the idle timeout
        assert c.closed()


@pytest.fixture(scope="module")
def echo_gw(registry: RegistryInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway whose backends are tests/fake_backend.py: echoes, or large answers."""
    gw = Gateway(
        tmp_path_factory.mktemp("lane-echo") / "data",
        registry.tracking_uri,
        extra_env={"GATEWAY_BACKEND_COMMAND": FAKE_BACKEND},
    )
    with serving(gw):
        yield gw


ADMIN, INFER, USER, PASSWORD = "lane-admin-token", "lane-infer-token", "dora", "a passphrase"


@pytest.fixture(scope="module")
def secured_gw(
    registry: RegistryInfo, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """Access control on (tokens and an htpasswd user), fake backends, KEY deployed."""
    root = tmp_path_factory.mktemp("lane-auth")
    htpasswd = root / "htpasswd"
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    htpasswd.write_text(f"{USER}:{hashed}\n")
    gw = Gateway(
        root / "data",
        registry.tracking_uri,
        extra_env={
            "GATEWAY_BACKEND_COMMAND": FAKE_BACKEND,
            "GATEWAY_ADMIN_TOKEN": ADMIN,
            "GATEWAY_INFERENCE_TOKEN": INFER,
            "GATEWAY_HTPASSWD": str(htpasswd),
        },
    )
    with serving(gw, _bearer(ADMIN)):
        yield gw


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize(
    ("credentials", "status"),
    [
        ("", 401),
        ("Bearer wrong", 401),
        (f"Bearer {INFER}", 200),
        (f"Bearer {ADMIN}", 200),
        ("Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode(), 200),
        ("Basic " + base64.b64encode(f"{USER}:wrong".encode()).decode(), 401),
    ],
)
def test_the_lane_checks_credentials_as_aiohttp_does(
    secured_gw: Gateway, credentials: str, status: int
) -> None:
    samples = scrape(secured_gw)  # /metrics is open here
    calls = value(samples, "modelgw_inference_lane_calls_total")
    header = f"Authorization: {credentials}\r\n" if credentials else ""
    on_lane, via_aiohttp = Client(secured_gw.port), Client(secured_gw.port)
    try:
        on_lane.send(post(body=b'{"n": 1}', extra=header))
        lane_status, lane_headers, lane_body = on_lane.answer()
        via_aiohttp.send(HEALTH)
        assert via_aiohttp.answer()[0] == 200
        via_aiohttp.send(post(body=b'{"n": 1}', extra=header))
        http_status, http_headers, http_body = via_aiohttp.answer()
    finally:
        on_lane.close()
        via_aiohttp.close()
    assert value(scrape(secured_gw), "modelgw_inference_lane_calls_total") == calls + 1
    assert lane_status == http_status == status, (lane_body, http_body)
    if status == 200:
        assert lane_body == http_body == b'{"n": 1}'
    else:
        assert json.loads(lane_body) == json.loads(http_body)
        assert json.loads(lane_body)["error"] == "unauthorized"
        assert lane_headers["www-authenticate"] == http_headers["www-authenticate"]


@pytest.mark.parametrize("version", ["1.1", "1.0"])
def test_a_large_answer_streams_through_the_lane(echo_gw: Gateway, version: str) -> None:
    size = 3 << 20  # past the pool's 1 MiB: relayed chunk by chunk, never held whole
    calls, _ = lane_counts(echo_gw)
    c = Client(echo_gw.port)
    try:
        c.send(post(body=f"big:{size}".encode()).replace(b"HTTP/1.1", f"HTTP/{version}".encode()))
        status, headers, body = c.answer() if version == "1.1" else _until_eof(c)
        assert status == 200 and body == b'"' + b"x" * size + b'"'
        assert headers["x-model-version"] == "1" and headers["x-request-id"]
        if version == "1.1":
            assert headers["transfer-encoding"] == "chunked"
            c.send(post(body=b'{"again": true}'))  # the connection serves on
            assert c.answer()[2] == b'{"again": true}'
        else:
            assert headers["connection"] == "close"  # its end is the connection's
    finally:
        c.close()
    assert lane_counts(echo_gw)[0] == calls + (2 if version == "1.1" else 1)


def _until_eof(c: Client) -> Answer:
    status_line = c.file.readline()
    headers = {}
    while (line := c.file.readline()) not in (b"\r\n", b""):
        name, _, val = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = val.strip()
    return int(status_line.split()[1]), headers, c.file.read()


def test_a_lane_call_in_flight_at_sigterm_is_answered_then_the_connection_closes(
    echo_gw: Gateway,
) -> None:
    # Last in this module: it stops the echo gateway.
    c = Client(echo_gw.port)
    idle = Client(echo_gw.port)
    try:
        c.send(post(body=b"sleep:2"))
        time.sleep(0.5)  # the call is at its backend
        assert echo_gw.proc is not None
        echo_gw.proc.send_signal(signal.SIGTERM)
        status, headers, body = c.answer()
        assert (status, body) == (200, b"sleep:2")
        assert headers["connection"] == "close" and c.closed()
        assert idle.closed()
        assert echo_gw.proc.wait(60) == 0
    finally:
        c.close()
        idle.close()
