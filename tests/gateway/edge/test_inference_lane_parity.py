"""The inference lane against aiohttp: each test compares a gateway with the lane and one
whose lane is off (GATEWAY_INFERENCE_LANE=0), both on tests/fake_backend.py backends, or
checks a limit the lane must keep (memory per connection, write back-pressure). Written
by a review of the lane; each of its first five failures was a defect, fixed since."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from gateway.edge.inference_lane import InferenceLane, LaneConnection
from tests.conftest import RegistryInfo
from tests.gateway.edge.test_inference_lane import FAKE_BACKEND, Client, post
from tests.gateway.edge.test_operations import scrape, value
from tests.support import Gateway, wait_until

KEY = "wine-quality-1"
BODY_S = 1


def _gateway(registry: RegistryInfo, where: Path, lane: str) -> Gateway:
    return Gateway(
        where / "data",
        registry.tracking_uri,
        extra_env={
            "GATEWAY_BACKEND_COMMAND": FAKE_BACKEND,
            "GATEWAY_INFERENCE_LANE": lane,
            "GATEWAY_BODY_TIMEOUT": str(BODY_S),
            "GATEWAY_LOG_SAMPLE": "0",  # no inference log: memory is the connections'
        },
    )


@pytest.fixture(scope="module")
def gws(
    registry: RegistryInfo, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Gateway]]:
    """{"lane": a gateway with the lane, "aiohttp": one without}, both with KEY deployed."""
    pair = {
        "lane": _gateway(registry, tmp_path_factory.mktemp("review-lane"), "1"),
        "aiohttp": _gateway(registry, tmp_path_factory.mktemp("review-aiohttp"), "0"),
    }
    try:
        for gw in pair.values():
            gw.start()
            assert gw.post(f"/deploy/{KEY.rsplit('-', 1)[0]}/1").status == 201, gw.log()
        for gw in pair.values():
            gw.wait_running(KEY)
        yield pair
    finally:
        for gw in pair.values():
            if gw.proc is not None:
                gw.stop()


def _raw_answer(c: Client) -> tuple[bytes, dict[str, str], bytes]:
    """(status line, headers, body) of one Content-Length answer."""
    status_line = c.file.readline().rstrip(b"\r\n")
    headers: dict[str, str] = {}
    while (line := c.file.readline()) not in (b"\r\n", b""):
        name, _, val = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = val.strip()
    return status_line, headers, c.file.read(int(headers.get("content-length", "0")))


def _rss_kb(gw: Gateway) -> int:
    assert gw.proc is not None
    for line in Path(f"/proc/{gw.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _served(gw: Gateway) -> float:
    return value(scrape(gw), "modelgw_requests_total", key=KEY, code="200")


# ------------------------------------------------------------------ parity


def test_http10_keep_alive_answer_is_aiohttps(gws: dict[str, Gateway]) -> None:
    """An HTTP/1.0 keep-alive call: aiohttp answers `HTTP/1.0 ...` with
    `Connection: keep-alive` (the only way a 1.0 client knows it may reuse it)."""
    seen = {}
    for name, gw in gws.items():
        c = Client(gw.port)
        try:
            c.send(
                post(body=b'{"a": 1}', extra="Connection: keep-alive\r\n").replace(
                    b"HTTP/1.1", b"HTTP/1.0"
                )
            )
            status_line, headers, body = _raw_answer(c)
            seen[name] = (status_line.split()[0], headers.get("connection"), body)
        finally:
            c.close()
    assert seen["lane"] == seen["aiohttp"], seen


def test_a_stalled_pipelined_body_behind_a_slow_call_gets_its_408(
    gws: dict[str, Gateway],
) -> None:
    """Call A takes 2 s; call B, pipelined behind it, never sends its body. aiohttp
    answers A, then B's 408 (the module doc: such a body "is a 408"); the lane?"""
    seen = {}
    for name, gw in gws.items():
        c = Client(gw.port)
        try:
            c.send(post(body=b"sleep:2") + post(body=b'{"b": 1}')[:-3])
            first = c.answer()
            assert first[0] == 200 and first[2] == b"sleep:2", first
            c.sock.settimeout(BODY_S + 5)
            try:
                second: object = c.answer()[0]
            except AssertionError:  # the status line was empty: closed without an answer
                second = "closed without an answer"
            seen[name] = second
        finally:
            c.close()
    assert seen["aiohttp"] == 408, seen
    assert seen["lane"] == seen["aiohttp"], seen


def test_odd_requests_are_answered_alike(gws: dict[str, Gateway]) -> None:
    """Paths, methods and headers the lane must serve exactly as aiohttp or hand over."""
    cases = [
        post(f"/{KEY}/invocations"),
        post(f"/model/{KEY}"),
        post(f"/{KEY}/"),
        post(f"//{KEY}"),
        post(f"/./{KEY}"),
        post(f"/x/../{KEY}"),
        post(f"/{KEY}?a=1"),
        post("/wine%2Dquality-1"),
        post(f"/{KEY.upper()}"),
        post(f"http://gw/{KEY}"),
        post(f"/{KEY}", extra="X-Request-Timeout: abc\r\n"),
        post(f"/{KEY}", extra="X-Request-Timeout: -1\r\n"),
        post(f"/{KEY}", body=b"sleep:1", extra="X-Request-Timeout: 0.2\r\n"),
        post(f"/{KEY}").replace(b"Content-Length: ", b"Content-Length: 0"),
        b"POST /" + KEY.encode() + b" HTTP/1.1\r\nHost: gw\r\n\r\n",
        b"\r\n\r\n" + post(),
        post().replace(b"POST", b"PUT"),
        post().replace(b"POST", b"PATCH"),
    ]
    differ = []
    for raw in cases:
        got = {}
        for name, gw in gws.items():
            c = Client(gw.port)
            try:
                c.send(raw)
                status_line, headers, body = _raw_answer(c)
                try:
                    shape: object = json.loads(body)
                    if isinstance(shape, dict) and "error" in shape:
                        shape = shape["error"]
                except ValueError:
                    shape = body
                got[name] = (status_line, shape, headers.get("content-type"))
            finally:
                c.close()
        if got["lane"] != got["aiohttp"]:
            differ.append((raw[:60], got))
    assert not differ, differ


def test_duplicate_singleton_headers_are_refused_as_aiohttp_does(
    gws: dict[str, Gateway],
) -> None:
    """aiohttp refuses a request with two Content-Type (or Host) headers with a 400:
    which one a backend or a proxy in front would read is ambiguous."""
    for extra in ("Content-Type: text/csv\r\n", "Host: other\r\n"):
        seen = {}
        for name, gw in gws.items():
            c = Client(gw.port)
            try:
                c.send(post(extra=extra))
                seen[name] = c.answer()[0]
            finally:
                c.close()
        assert seen["aiohttp"] == 400, (extra, seen)
        assert seen["lane"] == seen["aiohttp"], (extra, seen)


def test_a_body_timeout_408_is_answered_alike(gws: dict[str, Gateway]) -> None:
    seen = {}
    for name, gw in gws.items():
        c = Client(gw.port)
        try:
            c.send(post()[:-3])
            status_line, _, body = _raw_answer(c)
            seen[name] = (status_line, json.loads(body)["error"], c.closed())
        finally:
            c.close()
    assert seen["lane"] == seen["aiohttp"], seen


# ------------------------------------------------------------------ memory


def test_a_client_that_never_reads_cannot_grow_the_gateway(gws: dict[str, Gateway]) -> None:
    """200 pipelined calls whose answers are 500 kB each (a 9-byte body asks for one),
    and a client that reads nothing: aiohttp waits for the socket to drain between
    answers; the lane must too, else ~100 MB of answers pile up in its memory."""
    grown = {}
    for name, gw in gws.items():
        before_rss, before = _rss_kb(gw), _served(gw)
        s = socket.create_connection(("127.0.0.1", gw.port))
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(b"".join(post(body=b"big:500000") for _ in range(200)))
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and _served(gw) < before + 200:
                time.sleep(0.5)
            grown[name] = ((_rss_kb(gw) - before_rss) // 1024, _served(gw) - before)
        finally:
            s.close()
    # (MB grown, calls answered while the client read nothing)
    assert grown["aiohttp"][0] < 40, grown
    assert grown["lane"][0] < 40, grown


def test_a_keep_alive_connection_does_not_hold_every_request_it_served() -> None:
    """The real LaneConnection fed as a pipelining client's reads often come: each ends a
    few bytes into the next request. Its buffer must keep at most the unfinished request,
    not every byte the connection has carried."""
    loop = asyncio.new_event_loop()
    try:
        lane = SimpleNamespace(
            max_head=8192, max_body=1 << 20, body_timeout=5.0, _loop=loop,
            connections=set(), key_for=lambda path: KEY,
        )  # fmt: skip
        conn = LaneConnection(cast(InferenceLane, lane))
        transport = SimpleNamespace(get_extra_info=lambda name: ("127.0.0.1", 1))
        conn.connection_made(cast(asyncio.Transport, transport))
        served: list[object] = []
        conn._begin = served.append  # type: ignore[method-assign,assignment]
        one = post(body=b"a" * 32000)
        conn.data_received(one[:10])
        for _ in range(200):
            conn.data_received(one[10:] + one[:10])
        assert len(served) == 200
        assert len(conn._buf) < 2 * len(one), len(conn._buf)  # one partial request at most
    finally:
        loop.close()


def test_log_quiet(gws: dict[str, Gateway]) -> None:
    """None of the above logged a traceback from a lane callback."""
    log = gws["lane"].data_dir.parent / f"gateway-{gws['lane'].port}.log"
    wait_until(lambda: log.exists(), 5)
    assert "inference lane: a parser callback failed" not in log.read_text()


def test_requests_dribbled_byte_by_byte_are_answered_alike(gws: dict[str, Gateway]) -> None:
    """A lane call, a hand-off and a call after it, sent one byte per segment (heads split
    everywhere, the CRLFCRLF included), after leading empty lines."""
    raw = b"\r\n" + post(body=b'{"n": 1}') + b"GET /health HTTP/1.1\r\nHost: gw\r\n\r\n"
    raw += post(body=b'{"n": 3}')
    seen = {}
    for name, gw in gws.items():
        c = Client(gw.port)
        try:
            c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for i in range(len(raw)):
                c.send(raw[i : i + 1])
                time.sleep(0.001)
            first, second, third = c.answer(), c.answer(), c.answer()
            seen[name] = [(first[0], first[2]), second[0], (third[0], third[2])]
        finally:
            c.close()
    assert seen["lane"][0] == (200, b'{"n": 1}') and seen["lane"][2] == (200, b'{"n": 3}')
    assert seen["lane"] == seen["aiohttp"], seen
