"""Operating the gateway: Prometheus metrics, access logs, request ids, hostile input."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import ONE_ROW, Gateway, wait_until

KEY = "wine-quality-1"


def scrape(gw: Gateway) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    reply = gw.get("/metrics")
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(reply.body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_exactly_the_traffic_sent(gateway: Gateway) -> None:
    gateway.wait_running(KEY)
    before = scrape(gateway)
    for _ in range(7):
        assert gateway.post(f"/{KEY}", json_body=ONE_ROW).status == 200
    for _ in range(2):
        assert (
            gateway.post(
                f"/{KEY}", body=b"{bad", headers={"Content-Type": "application/json"}
            ).status
            == 400
        )
    for name in ("nope-1", "other-2", "x-3"):
        assert gateway.post(f"/{name}", json_body=ONE_ROW).status == 404
    after = scrape(gateway)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("modelgw_requests_total", key=KEY, code="200") == 7
    assert delta("modelgw_requests_total", key=KEY, code="400") == 2
    # Unknown keys share one label, so scanners cannot blow up the series count.
    assert delta("modelgw_requests_total", key="__unknown__", code="404") == 3
    assert not any(labels and ("key", "nope-1") in labels for _, labels in after)
    assert delta("modelgw_request_duration_seconds_count", key=KEY) == 9
    assert delta("modelgw_backend_duration_seconds_count", key=KEY) == 9
    assert value(after, "modelgw_requests_in_flight", key=KEY) == 0
    entry = gateway.deployment(KEY)
    port, replica = str(entry["port"]), str(entry["replicas"][0]["replica"])
    assert value(after, "modelgw_backend_up", key=KEY, replica=replica, port=port) == 1
    assert value(after, "modelgw_backend_healthy", key=KEY, replica=replica, port=port) == 1
    assert (
        value(after, "modelgw_backend_restarts_total", key=KEY, replica=replica, port=port)
        == entry["restarts"]
    )
    assert value(after, "modelgw_free_ports") == gateway.get("/get_number_free_ports").json()
    assert value(after, "modelgw_deploy_duration_seconds", key=KEY) > 0
    wait_until(
        lambda: (
            value(scrape(gateway), "modelgw_inference_log_records_total", outcome="written")
            >= value(before, "modelgw_inference_log_records_total", outcome="written") + 7
        ),
        10,
    )


def _access_lines(gw: Gateway) -> list[dict[str, Any]]:
    lines = []
    for line in gw.log().splitlines():
        if line.startswith("{"):
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue
    return lines


def test_request_id_is_passed_on_echoed_and_logged(gateway: Gateway) -> None:
    reply = gateway.post(f"/{KEY}", json_body=ONE_ROW, headers={"X-Request-ID": "trace-abc.123"})
    assert reply.status == 200
    assert reply.headers["x-request-id"] == "trace-abc.123"
    made = gateway.get("/get_deployed_models").headers["x-request-id"]
    assert len(made) == 32 and made != gateway.get("/health").headers["x-request-id"]
    error = gateway.post("/nope-1", json_body={}, headers={"X-Request-ID": "bad id with spaces"})
    assert error.status == 404 and error.headers["x-request-id"] != "bad id with spaces"

    def logged() -> dict[str, Any] | None:
        return next((e for e in _access_lines(gateway) if e["request_id"] == "trace-abc.123"), None)

    entry = wait_until(logged, 10, what="the access log line")
    assert entry["method"] == "POST" and entry["key"] == KEY and entry["status"] == 200
    assert entry["bytes_in"] > 0 and entry["bytes_out"] > 0 and entry["duration_ms"] >= 0


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status"),
    [
        ("GET", "/model/wine-quality-1/new_metrics/..%2F..%2F..%2Fetc%2Fpasswd", None, {}, 400),
        ("GET", "/model/..%2F..%2Fetc-1/metrics", None, {}, 400),
        ("POST", "/deploy/..%2F..%2Fbin%2Fsh/1", None, {}, 400),
        ("POST", "/deploy/wine-quality/1%3B%20rm%20-rf", None, {}, 400),
        ("POST", f"/model/{KEY}/set_new_metrics", b"a,b\n1,2", {"Content-Type": "text/csv"}, 415),
        (
            "POST",
            f"/model/{KEY}/set_new_metrics",
            b"[" * 50_000 + b"]" * 50_000,
            {"Content-Type": "application/json"},
            400,
        ),
        (
            "POST",
            f"/model/{KEY}/set_new_metrics",
            b"\xff\xfe",
            {"Content-Type": "application/json"},
            400,
        ),
        ("GET", f"/model/{KEY}/dataset?format=csv&format=jsonl", None, {}, 400),
        ("POST", "/deploy/wine-quality/1?replicas=1&replicas=2", None, {}, 400),
        ("GET", f"/model/{KEY}/degradation_report?tolerance=nan", None, {}, 400),
    ],
)
def test_hostile_input_is_refused_and_serving_goes_on(
    gateway: Gateway, method: str, path: str, body: bytes | None, headers: dict, status: int
) -> None:
    reply = gateway.request(method, path, body=body, headers=headers)
    assert reply.status == status, reply.body
    assert reply.json()["error"]
    assert gateway.post(f"/{KEY}", json_body=ONE_ROW).status == 200


def test_oversized_headers_are_refused(gateway: Gateway) -> None:
    reply = gateway.get("/health", headers={"X-Big": "a" * 20_000})
    assert reply.status == 400
    assert gateway.post(f"/{KEY}", json_body=ONE_ROW).status == 200


def test_a_client_that_stops_sending_is_cut_off_while_others_are_served(gateway: Gateway) -> None:
    # Declares 1000 bytes, sends 10, then stalls: the gateway must not wait forever,
    # and must keep serving everyone else meanwhile.
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=60) as slow:
        slow.sendall(
            f"POST /{KEY} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            'Content-Length: 1000\r\n\r\n{"inputs":'.encode()
        )
        for _ in range(3):
            assert gateway.post(f"/{KEY}", json_body=ONE_ROW).status == 200
        slow.settimeout(gateway_body_timeout(gateway) + 30)
        answer = slow.recv(65536).decode(errors="replace")
    assert answer.startswith("HTTP/1.1 408"), answer[:200]
    assert '"request_timeout"' in answer


def gateway_body_timeout(gateway: Gateway) -> float:
    return float(gateway.env().get("GATEWAY_BODY_TIMEOUT", 30))
