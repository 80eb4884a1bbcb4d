"""Each record is logged under the version that answered it, with its arm, and exported so.

A real gateway serves two real versions of the demo model behind a route with a
shadow: the caller's answer comes from version 1 (`primary`); version 2 gets a
copy of each call (`shadow`) and also serves direct calls of its own (`primary`).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import pytest

from tests.conftest import RegistryInfo
from tests.support import ONE_ROW, Gateway, wait_until

NAME = "wine-quality"


@pytest.fixture(scope="module")
def gw(registry: RegistryInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = Gateway(
        tmp_path_factory.mktemp("arms") / "data",
        registry.tracking_uri,
        extra_env={"GATEWAY_LOG_FLUSH_INTERVAL": "0.05"},
    ).start()
    try:
        with ThreadPoolExecutor(2) as pool:
            replies = list(pool.map(lambda v: gateway.post(f"/deploy/{NAME}/{v}"), (1, 2)))
        assert [r.status for r in replies] == [201, 201], [r.body for r in replies]
        yield gateway
    finally:
        gateway.stop()


def _dataset(gw: Gateway, key: str, fmt: str = "csv") -> pd.DataFrame:
    reply = gw.get(f"/model/{key}/dataset?format={fmt}")
    assert reply.status == 200, reply.body
    if not reply.body:
        return pd.DataFrame()
    if fmt == "jsonl":
        return pd.read_json(io.BytesIO(reply.body), lines=True)
    return pd.read_csv(io.BytesIO(reply.body))


def test_the_shadow_copy_is_logged_under_its_version_with_arm_shadow(gw: Gateway) -> None:
    route = gw.request("PUT", f"/route/{NAME}", json_body={"versions": {"1": 100}, "shadow": "2"})
    assert route.status == 200, route.body
    routed = [f"routed-{i}" for i in range(6)]
    for rid in routed:
        reply = gw.post(f"/{NAME}", json_body=ONE_ROW, headers={"X-Request-ID": rid})
        assert reply.status == 200, reply.body
    direct = gw.post(f"/{NAME}-2", json_body=ONE_ROW, headers={"X-Request-ID": "direct-0"})
    assert direct.status == 200, direct.body

    wait_until(lambda: len(_dataset(gw, f"{NAME}-2")) == 7, 30, what="the shadow's 6 copies")
    for fmt in ("csv", "jsonl"):
        primary = _dataset(gw, f"{NAME}-1", fmt)
        assert sorted(primary["request_id"]) == routed
        assert set(primary["arm"]) == {"primary"}
        assert list(primary.columns)[-4:] == ["ground_truth", "request_id", "timestamp", "arm"]

        second = _dataset(gw, f"{NAME}-2", fmt)
        arms = dict(zip(second["request_id"], second["arm"], strict=True))
        assert arms == {**dict.fromkeys(routed, "shadow"), "direct-0": "primary"}
