"""The client when things go wrong on the gateway's side: a backend that cannot
start (its last lines are shown), and access control (401 names what to set)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

import pytest

from tests.conftest import RegistryInfo
from tests.gateway.client.conftest import modelgw
from tests.support import Gateway

TOKEN = "client-test-token-5d1e"
# A "backend" that says why it cannot serve, then exits: what a broken model does.
CRASHING = [sys.executable, "-c", "import sys; print('loading model {model}'); "
            "print('boom: no such artifact', file=sys.stderr); sys.exit(3)"]  # fmt: skip


@pytest.fixture(scope="module")
def guarded_gateway(
    registry: RegistryInfo, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    gw = Gateway(
        tmp_path_factory.mktemp("client-failing") / "data", registry.tracking_uri,
        extra_env={"GATEWAY_BACKEND_COMMAND": json.dumps(CRASHING), "GATEWAY_ADMIN_TOKEN": TOKEN,
                   "GATEWAY_MAX_START_RETRIES": "0", "GATEWAY_DEPLOY_TIMEOUT": "60"},
    )  # fmt: skip
    gw.start()
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture(autouse=True)
def pointed_at(guarded_gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> Gateway:
    monkeypatch.setenv("GATEWAY_URL", f"http://127.0.0.1:{guarded_gateway.port}")
    for name in ("GATEWAY_ADMIN_TOKEN", "GATEWAY_INFERENCE_TOKEN", "GATEWAY_USER"):
        monkeypatch.delenv(name, raising=False)
    return guarded_gateway


def test_without_a_token_the_line_says_what_to_set() -> None:
    result = modelgw("ls")
    assert result.code == 1
    assert result.err.startswith("modelgw ls: ")
    assert result.err.endswith("(HTTP 401 unauthorized); set GATEWAY_ADMIN_TOKEN, or"
                               " GATEWAY_USER and GATEWAY_PASSWORD\n")  # fmt: skip
    assert TOKEN not in result.err


def test_a_wrong_token_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", "not-the-token")
    assert modelgw("ls").code == 1


def test_a_backend_that_cannot_start_shows_its_last_lines(
    guarded_gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", TOKEN)
    result = modelgw("deploy", "wine-quality", "1", "--wait")
    assert result.code == 1, result.out
    lines = [line for line in result.err.splitlines() if not line.startswith("deploying ")]
    assert lines[0].startswith("modelgw deploy: deploy of wine-quality-1 failed: ")
    assert lines[0].endswith("(HTTP 502 deploy_failed)")
    assert lines[1] == "last output of the backend:"
    assert "  loading model wine-quality" in lines[2:]
    assert "  boom: no such artifact" in lines[2:]
    assert result.out == ""
    listed = modelgw("ls", "--json")
    assert (listed.code, json.loads(listed.out)) == (0, {})


def test_a_failed_deploy_with_json_prints_the_error_object(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", TOKEN)
    result = modelgw("deploy", "wine-quality", "1", "--wait", "--json")
    assert result.code == 1
    error = json.loads(result.out)
    assert (error["error"], error["status"]) == ("deploy_failed", 502)
    assert "boom: no such artifact" in error["detail"]
