"""The OpenAPI document is true: a bounded schemathesis pass against a live gateway.

It runs against the session gateway with a real deployment, checks that no
generated request gets a 5xx and that every answer matches its documented schema.
"""

from __future__ import annotations

import hypothesis
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support import Gateway

KEY = "wine-quality-1"


@pytest.fixture(scope="module")
def api_schema(gateway: Gateway):  # type: ignore[no-untyped-def]
    gateway.wait_running(KEY)
    reply = gateway.get("/openapi.json")
    assert reply.status == 200
    return schemathesis.openapi.from_dict(reply.json())


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@hypothesis.settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(hypothesis.HealthCheck),
)
def test_api_matches_its_document(case: schemathesis.Case, gateway: Gateway) -> None:
    case.call_and_validate(
        base_url=f"http://127.0.0.1:{gateway.port}",
        checks=[
            not_a_server_error,
            response_schema_conformance,
            status_code_conformance,
            content_type_conformance,
        ],
        timeout=60,
    )


def test_docs_page_lists_every_operation(gateway: Gateway) -> None:
    spec = gateway.get("/openapi.json").json()
    page = gateway.get("/docs")
    assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    for path in spec["paths"]:
        assert path.replace("{", "").replace("}", "") in page.body.decode().replace(
            "{", ""
        ).replace("}", "")
