"""No input answers 500: the findings of issue 14 as fixed cases, then a bounded fuzz.

Runs against a live gateway of its own with wine-quality-1 deployed: bad bodies
fill the backend's log with MLflow's tracebacks, which other tests of the shared
gateway read. The fuzz is derandomized with a fixed number of examples, so
every run sends the same requests. It never deploys, scales or undeploys the
deployment: those paths are fuzzed with keys and names that do not exist, which
still runs every parameter check (they come before the look-up).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import RegistryInfo
from tests.support import ONE_ROW, WINE_COLUMNS, WINE_VALUES, Gateway, Reply

KEY = "wine-quality-1"
# Registered, not deployed here: reference uploads of the fuzz land on it.
SCRATCH_KEY = "wine-quality-2"
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def gateway(registry: RegistryInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """This module's own gateway (it shadows the shared one) with KEY deployed."""
    gw = Gateway(tmp_path_factory.mktemp("fuzz") / "data", registry.tracking_uri).start()
    try:
        reply = gw.post("/deploy/wine-quality/1")
        assert reply.status == 201, (reply.body, gw.log())
        yield gw
    finally:
        gw.stop()


def assert_json_error_or_success(reply: Reply, what: str) -> None:
    assert reply.status != 500, (what, reply.body[:500])
    if reply.status >= 400:
        assert reply.headers.get("content-type", "").startswith("application/json"), (what, reply)
        body = reply.json()
        assert isinstance(body.get("error"), str) and isinstance(body.get("detail"), str), body


def feedback_body(timestamp: Any) -> bytes:
    body = {**ONE_ROW, "results": [1]}
    return (json.dumps(body)[:-1] + f', "timestamp": {timestamp}}}').encode()


# ------------------------------------------------------------ fixed findings


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("POST", f"/{KEY}", JSON),
        ("POST", f"/{KEY}/invocations", JSON),
        ("POST", f"/model/{KEY}/set_new_metrics", JSON),
        ("PUT", f"/model/{KEY}/reference", {"Content-Type": "text/csv"}),
    ],
)
@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
def test_a_body_that_is_not_what_content_encoding_says_is_400(
    gateway: Gateway, method: str, path: str, headers: dict[str, str], encoding: str
) -> None:
    body = json.dumps(ONE_ROW).encode()
    reply = gateway.request(
        method, path, body=body, headers={**headers, "Content-Encoding": encoding}
    )
    assert reply.status == 400, reply.body
    assert reply.json()["error"] == "bad_request"
    assert encoding in reply.json()["detail"]
    # The connection that carried the bad body is closed; the gateway serves on.
    assert reply.headers.get("connection") == "close"
    assert gateway.post(f"/{KEY}", json_body=ONE_ROW).status == 200


def test_a_body_that_is_compressed_as_it_says_is_read(gateway: Gateway) -> None:
    body = zlib.compress(json.dumps(ONE_ROW).encode())
    reply = gateway.post(f"/{KEY}", body=body, headers={**JSON, "Content-Encoding": "deflate"})
    assert reply.status == 200, reply.body


@pytest.mark.parametrize(
    "query",
    ["end_date=9999-12-31", "start_date=9999-12-31", "start_date=0001-01-01&end_date=9999-12-31"],
)
@pytest.mark.parametrize("endpoint", ["dataset", "metrics/live"])
def test_dates_at_the_ends_of_the_calendar(gateway: Gateway, endpoint: str, query: str) -> None:
    reply = gateway.get(f"/model/{KEY}/{endpoint}?{query}")
    assert reply.status in (200, 404), reply.body  # 404: no baseline for live metrics


@pytest.mark.parametrize("timestamp", ["1e300", "-1e20", "NaN", "Infinity", "-Infinity", "1e20"])
def test_set_new_metrics_timestamps_out_of_range_are_400(gateway: Gateway, timestamp: str) -> None:
    reply = gateway.post(
        f"/model/{KEY}/set_new_metrics", body=feedback_body(timestamp), headers=JSON
    )
    assert reply.status == 400, reply.body
    assert "timestamp" in reply.json()["detail"]


def test_the_same_timestamp_twice_keeps_both_snapshots(gateway: Gateway) -> None:
    body = feedback_body(1_700_000_123.5)
    first = gateway.post(f"/model/{KEY}/set_new_metrics", body=body, headers=JSON)
    second = gateway.post(f"/model/{KEY}/set_new_metrics", body=body, headers=JSON)
    assert (first.status, second.status) == (201, 201), (first.body, second.body)
    names = first.json()["name"], second.json()["name"]
    assert names[0] != names[1]
    assert names[1].startswith(names[0].removesuffix(".json"))
    listed = gateway.get(f"/model/{KEY}/new_metrics_file_name").json()["files"]
    assert set(names) <= set(listed)
    for name in names:
        assert gateway.get(f"/model/{KEY}/new_metrics/{name}").status == 200


def test_json_nested_deeper_than_the_backend_can_read_is_not_500(gateway: Gateway) -> None:
    depth = 1_500
    body = '{"dataframe_split": {"columns": ["a"], "data": ' + "[" * depth + "]" * depth + "}}"
    reply = gateway.post(f"/{KEY}", body=body.encode(), headers=JSON)
    # MLflow's server fails with its own 500; the caller sees a backend failure.
    assert reply.status == 502, reply.body
    assert reply.json()["error"] == "backend_error"
    assert gateway.post(f"/{KEY}", json_body=ONE_ROW).status == 200


def test_reference_of_a_version_that_does_not_exist_is_404(gateway: Gateway) -> None:
    reply = gateway.request(
        "PUT", "/model/nonexistent-9/reference", body=b"a,b\n1,2\n",
        headers={"Content-Type": "text/csv"},
    )  # fmt: skip
    assert reply.status == 404, reply.body
    assert reply.json()["error"] == "model_not_found"
    assert gateway.get("/model/nonexistent-9/degradation_report?format=json").status == 404


@pytest.mark.parametrize("replicas", ["%D9%A3", "%EF%BC%93", "3_0", "%2B3", "%203", "3%20", "0x3"])
def test_replicas_must_be_ascii_digits(gateway: Gateway, replicas: str) -> None:
    # A key that is not deployed: before the check, '٣' (Arabic-Indic 3) read as 3
    # and the call went on to the look-up (404); a deployed key would have scaled.
    reply = gateway.post(f"/scale/no-such-model-7?replicas={replicas}")
    assert reply.status == 400, reply.body
    assert "replicas" in reply.json()["detail"]
    reply = gateway.post(f"/deploy/no-such-model/7?replicas={replicas}")
    assert reply.status == 400, reply.body


# ------------------------------------------------------------------- the fuzz

FUZZ = settings(
    max_examples=100,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

EDGE_TEXT = [
    "", "0", "-1", "1", "2", "17", "99999999999999999999", "1e309", "-1e20", "nan", "NaN",
    "inf", "-inf", "1.5", "0x10", "1_0", " 1", "\u0663", "\uff13", "9999-12-31", "0001-01-01",
    "2024-02-30", "2024-13-01", "20240101", "true", "false", "null", "[]", "{}", "%", "%00",
    "\x00", "..", "../..", "a" * 300, "\u202e", "\U0001f600", "csv", "jsonl", "zip", "json",
]  # fmt: skip
texts = st.one_of(st.sampled_from(EDGE_TEXT), st.text(max_size=40))
# Keys and names that are never the shared deployment's own.
other_keys = st.one_of(
    st.sampled_from(["nope-1", "wine-quality-99", "wine-quality-0", "a@b", "x-", "-1", "@"]),
    st.text(min_size=1, max_size=40),
).filter(lambda k: "wine" not in k.lower())
data_keys = st.one_of(st.sampled_from([KEY, SCRATCH_KEY]), other_keys)


def segment(value: str) -> str:
    return quote(value, safe="")


def query(params: dict[str, str]) -> str:
    return "?" + urlencode(params) if params else ""


def params_of(names: list[str]) -> st.SearchStrategy[dict[str, str]]:
    return st.dictionaries(st.sampled_from(names), texts, max_size=len(names))


@FUZZ
@given(data=st.data())
def test_management_parameters_never_500(gateway: Gateway, data: st.DataObject) -> None:
    name = data.draw(other_keys, "name")
    version = data.draw(texts, "version")
    deploy_params = data.draw(
        params_of(["replicas", "env_manager", "replace", "max_batch_size", "max_batch_delay_ms"]),
        "deploy params",
    )
    method, path = data.draw(
        st.sampled_from(
            [
                ("GET", f"/get_model_version_list/{segment(name)}"),
                ("GET", f"/model/{segment(name)}/signature"),
                ("POST", f"/deploy/{segment(name)}/{segment(version)}{query(deploy_params)}"),
                ("POST", f"/deploy/{segment(name)}{query(deploy_params)}"),
                ("POST", f"/undeploy/{segment(name)}"),
                ("POST", f"/scale/{segment(name)}{query({'replicas': version})}"),
                ("GET", f"/get_deployed_models{query(deploy_params)}"),
                ("GET", f"/logs/{segment(name)}{query({'lines': version, 'replica': version})}"),
                ("GET", f"/model/{KEY}/signature"),
            ]
        ),
        "call",
    )
    assert_json_error_or_success(gateway.request(method, path), f"{method} {path}")


@FUZZ
@given(data=st.data())
def test_data_parameters_never_500(gateway: Gateway, data: st.DataObject) -> None:
    key = segment(data.draw(data_keys, "key"))
    dates = data.draw(params_of(["start_date", "end_date", "format"]), "dates")
    report = data.draw(params_of(["format", "tolerance"]), "report params")
    name = segment(data.draw(texts, "snapshot name"))
    path = data.draw(
        st.sampled_from(
            [
                f"/model/{key}/dataset{query(dates)}",
                f"/model/{key}/metrics",
                f"/model/{key}/metrics/history",
                f"/model/{key}/metrics/live{query(dates)}",
                f"/model/{key}/new_metrics_file_name",
                f"/model/{key}/new_metrics/{name}",
                f"/model/{key}/new_metrics/metrics-20240101T000000000000Z-{name}.json",
                f"/model/{key}/degradation_report{query(report)}",
                f"/model/{key}/report{query(report)}",
            ]
        ),
        "path",
    )
    assert_json_error_or_success(gateway.get(path), path)


json_values = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20)
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
timestamps = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(), st.text(max_size=30),
    st.sampled_from(["9999-12-31T23:59:59", "0001-01-01", "2024-01-01T00:00:00+25:00"]),
)  # fmt: skip
feedback_objects = st.fixed_dictionaries(
    {"dataframe_split": st.just({"columns": WINE_COLUMNS, "data": [WINE_VALUES]})},
    optional={
        "results": st.one_of(st.lists(json_values, max_size=3), json_values),
        "timestamp": timestamps,
    },
)
content_types = st.sampled_from(
    ["application/json", "text/csv", "text/plain", "application/octet-stream", "", "a/b; c=d"]
)
encodings = st.sampled_from(["", "", "", "gzip", "deflate", "br", "identity", "x-unknown"])


def deep(depth: int) -> bytes:
    return b'{"inputs": ' + b"[" * depth + b"]" * depth + b"}"


def encode(body: bytes, encoding: str, honest: bool) -> bytes:
    if honest and encoding == "deflate":
        return zlib.compress(body)
    if honest and encoding == "gzip":
        compressor = zlib.compressobj(wbits=31)
        return compressor.compress(body) + compressor.flush()
    return body


bodies = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    feedback_objects.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
    st.integers(min_value=990, max_value=1_100).map(deep),
    st.text(max_size=200).map(str.encode),
)


@FUZZ
@given(data=st.data())
def test_data_bodies_never_500(gateway: Gateway, data: st.DataObject) -> None:
    body = data.draw(bodies, "body")
    encoding = data.draw(encodings, "encoding")
    body = encode(body, encoding, data.draw(st.booleans(), "honest encoding"))
    headers = {"Content-Type": data.draw(content_types, "content type")}
    if encoding:
        headers["Content-Encoding"] = encoding
    method, path = data.draw(
        st.sampled_from(
            [
                ("POST", f"/model/{KEY}/set_new_metrics"),
                ("POST", f"/model/{KEY}/feedback"),
                ("PUT", f"/model/{SCRATCH_KEY}/reference"),
                ("PUT", "/model/nonexistent-9/reference"),
                ("POST", f"/model/{segment(data.draw(other_keys, 'key'))}/set_new_metrics"),
            ]
        ),
        "call",
    )
    reply = gateway.request(method, path, body=body, headers=headers)
    assert_json_error_or_success(reply, f"{method} {path} {headers} {body[:80]!r}")


@FUZZ
@given(data=st.data())
def test_inference_bodies_never_500(gateway: Gateway, data: st.DataObject) -> None:
    body = data.draw(st.one_of(bodies, st.just(json.dumps(ONE_ROW).encode())), "body")
    encoding = data.draw(encodings, "encoding")
    body = encode(body, encoding, data.draw(st.booleans(), "honest encoding"))
    headers = {"Content-Type": data.draw(content_types, "content type")}
    if encoding:
        headers["Content-Encoding"] = encoding
    path = data.draw(
        st.sampled_from(
            [f"/{KEY}", f"/{KEY}/invocations", f"/model/{KEY}", f"/v2/models/{KEY}/infer"]
        ),
        "path",
    )
    reply = gateway.post(path, body=body, headers=headers)
    assert_json_error_or_success(reply, f"POST {path} {headers} {body[:80]!r}")
