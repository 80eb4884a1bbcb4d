"""Access control: each endpoint class against no, wrong and right credentials."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest

from tests.conftest import RegistryInfo
from tests.support import Gateway

ADMIN, INFER = "admin-secret-token", "inference-secret-token"
USER, PASSWORD = "alice", "correct horse"


@pytest.fixture(scope="module")
def secured(registry: RegistryInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    root = tmp_path_factory.mktemp("auth")
    htpasswd = root / "htpasswd"
    # htpasswd -B writes $2y$; bcrypt's own prefix is $2b$: accept both.
    hashed = (
        bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=5))
        .decode()
        .replace("$2b$", "$2y$", 1)
    )
    htpasswd.write_text(f"# accounts kept from the nginx set-up\n{USER}:{hashed}\n")
    gw = Gateway(
        root / "data",
        registry.tracking_uri,
        extra_env={
            "GATEWAY_ADMIN_TOKEN": ADMIN,
            "GATEWAY_INFERENCE_TOKEN": INFER,
            "GATEWAY_HTPASSWD": str(htpasswd),
            "GATEWAY_MAX_BODY_MB": "1",
        },
    ).start()
    try:
        yield gw
    finally:
        gw.stop()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


# (method, path): the status a request gets once it is let through.
ADMIN_CALL = ("GET", "/get_deployed_models", 200)
INFERENCE_CALL = ("POST", "/no-such-model-1", 404)  # past auth, the key is unknown
OPEN_CALLS = [("GET", "/health", 200), ("GET", "/metrics", 200), ("GET", "/openapi.json", 200)]


@pytest.mark.parametrize(
    ("call", "headers", "status"),
    [
        (ADMIN_CALL, {}, 401),
        (ADMIN_CALL, bearer("wrong"), 401),
        (ADMIN_CALL, bearer(INFER), 403),
        (ADMIN_CALL, bearer(ADMIN), 200),
        (ADMIN_CALL, basic(USER, PASSWORD), 200),
        (ADMIN_CALL, basic(USER, "wrong"), 401),
        (ADMIN_CALL, basic("mallory", PASSWORD), 401),
        (ADMIN_CALL, {"Authorization": "Basic !!notbase64"}, 401),
        (INFERENCE_CALL, {}, 401),
        (INFERENCE_CALL, bearer("wrong"), 401),
        (INFERENCE_CALL, bearer(INFER), 404),
        (INFERENCE_CALL, bearer(ADMIN), 404),
        (INFERENCE_CALL, basic(USER, PASSWORD), 404),
        (INFERENCE_CALL, basic(USER, "wrong"), 401),
        *[(call, {}, call[2]) for call in OPEN_CALLS],
    ],
)
def test_auth_matrix(
    secured: Gateway, call: tuple[str, str, int], headers: dict, status: int
) -> None:
    method, path, _ = call
    reply = secured.request(
        method, path, headers=headers, json_body={} if method == "POST" else None
    )
    assert reply.status == status, reply.body
    if status == 401:
        assert reply.json()["error"] == "unauthorized"
        challenge = reply.headers["www-authenticate"]
        assert 'Bearer realm="modelgw"' in challenge and 'Basic realm="modelgw"' in challenge
    if status == 403:
        assert reply.json()["error"] == "forbidden"


def test_body_limit_is_413_and_serving_goes_on(secured: Gateway) -> None:
    reply = secured.request(
        "PUT",
        "/model/some-model-1/reference",
        body=b"x" * (2 * 1024 * 1024),
        headers={**bearer(ADMIN), "Content-Type": "text/csv"},
    )
    assert reply.status == 413
    assert reply.json()["error"] == "payload_too_large"
    assert secured.get("/get_deployed_models", headers=bearer(ADMIN)).status == 200


def test_metrics_can_require_the_admin_token(registry: RegistryInfo, tmp_path: Path) -> None:
    gw = Gateway(
        tmp_path / "data",
        registry.tracking_uri,
        extra_env={"GATEWAY_ADMIN_TOKEN": ADMIN, "GATEWAY_METRICS_AUTH": "1"},
    ).start()
    try:
        assert gw.get("/metrics").status == 401
        assert gw.get("/metrics", headers=bearer(ADMIN)).status == 200
        assert gw.get("/health").status == 200
        # Only the admin token is set: inference stays open (it has its own token).
        assert gw.post("/no-such-model-1", json_body={}).status == 404
        assert gw.get("/get_deployed_models").status == 401
    finally:
        gw.stop()
