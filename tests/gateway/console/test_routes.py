"""The console's files and JSON helpers on the session gateway (auth off)."""

from __future__ import annotations

import fnmatch
import re
import tomllib

import pytest

from tests.support import ONE_ROW, REPO, Gateway, wait_until

KEY = "wine-quality-1"
STATIC = REPO / "gateway" / "console" / "static"


def test_ui_redirects_to_the_page(gateway: Gateway) -> None:
    reply = gateway.get("/ui")
    assert reply.status == 308 and reply.headers["location"] == "/ui/"


def test_page_is_html_that_may_load_only_this_origin(gateway: Gateway) -> None:
    reply = gateway.get("/ui/")
    assert reply.status == 200
    assert reply.headers["content-type"] == "text/html; charset=utf-8"
    csp = reply.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert reply.headers["x-content-type-options"] == "nosniff"
    assert reply.headers["cache-control"] == "no-cache"
    assert b'src="console.js"' in reply.body
    again = gateway.get("/ui/", headers={"If-None-Match": reply.headers["etag"]})
    assert again.status == 304 and again.body == b""


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("console.js", "text/javascript; charset=utf-8"),
        ("console.css", "text/css; charset=utf-8"),
        ("favicon.svg", "image/svg+xml"),
        ("index.html", "text/html; charset=utf-8"),
    ],
)
def test_files_have_their_types(gateway: Gateway, name: str, content_type: str) -> None:
    reply = gateway.get(f"/ui/{name}")
    assert reply.status == 200
    assert reply.headers["content-type"] == content_type
    assert reply.body == (STATIC / name).read_bytes()


@pytest.mark.parametrize(
    "path", ["/ui/health", "/ui/ping", "/ui/version", "/ui/nope.js", "/ui/%2e%2e%2fapp.py"]
)
def test_ui_paths_are_never_read_as_a_deployment_key(gateway: Gateway, path: str) -> None:
    # /{key}/health|ping|version would relay to a backend of a key "ui".
    reply = gateway.get(path)
    assert reply.status == 404
    assert reply.json()["error"] == "not_found", reply.body


def test_no_file_names_another_host() -> None:
    for path in STATIC.iterdir():
        if path.suffix in (".html", ".css", ".js", ".svg"):
            # An XML namespace is a name, not an address anything is fetched from.
            text = path.read_text().replace("http://www.w3.org/2000/svg", "")
            assert not re.search(r"""(https?:)?//[a-z0-9.-]+\.[a-z]{2,}""", text, re.I), path.name


def test_every_static_file_is_in_the_wheel() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["gateway"]
    for path in STATIC.iterdir():
        relative = path.relative_to(REPO / "gateway").as_posix()
        assert any(fnmatch.fnmatch(relative, p) for p in patterns), relative


def test_auth_info_when_auth_is_off(gateway: Gateway) -> None:
    reply = gateway.get("/ui/api/auth")
    assert reply.json() == {"required": False, "methods": [], "inference_required": False}


def test_stats_count_the_calls_just_made(gateway: Gateway) -> None:
    gateway.wait_running(KEY)
    for _ in range(3):
        assert gateway.post(f"/{KEY}", json_body=ONE_ROW).status == 200
    body = gateway.get(f"/ui/api/stats?key={KEY}").json()
    figures = body["keys"][KEY]
    assert figures["requests"] >= 3
    assert figures["p50_ms"] is not None and figures["p99_ms"] >= figures["p50_ms"]

    # The calls get a point of the series within one sampling interval.
    def series() -> list[dict]:
        return gateway.get(f"/ui/api/stats?key={KEY}").json()["series"]

    points = wait_until(series, 30, 0.5, "a point in the series")
    assert sum(p["requests"] for p in points) >= 3
    assert "series" not in gateway.get("/ui/api/stats").json()


def test_example_is_a_logged_body_that_predicts(gateway: Gateway) -> None:
    gateway.wait_running(KEY)
    assert gateway.post(f"/{KEY}", json_body=ONE_ROW).status == 200

    def example() -> dict | None:
        return gateway.get(f"/ui/api/example/{KEY}").json()["example"]

    found = wait_until(example, 30, what="a logged call")
    assert found["content_type"].startswith("application/json")
    reply = gateway.post(
        f"/{KEY}", body=found["body"].encode(), headers={"Content-Type": found["content_type"]}
    )
    assert reply.status == 200 and "predictions" in reply.json()


def test_example_of_a_key_with_no_calls_is_null(gateway: Gateway) -> None:
    assert gateway.get("/ui/api/example/never-called-7").json() == {"example": None}
    # A key that names no deployment and no version is the caller's mistake.
    reply = gateway.get("/ui/api/example/wine-quality@nobody")
    assert reply.status in (400, 404) and reply.json()["error"], reply.body
