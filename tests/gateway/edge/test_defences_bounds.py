"""One huge call cannot make a huge log entry, export or report.

The row cap works on the logged text: the rows kept are the original bytes (floats
stay exact), the rows dropped are counted. Then a live gateway with a small cap
and a small report budget: the caller still gets every prediction, the log keeps
the first rows, /health counts the rest, and the report reads only the newest
calls that fit its budget.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.records.row_cap import cap_answer, cap_call, cap_inputs
from gateway.records.rows import input_rows, prediction_values
from gateway.records.stores.sqlite import SQLiteStore
from gateway.records.writer import InferenceLogger
from tests.conftest import RegistryInfo
from tests.support import WINE_COLUMNS, WINE_VALUES, Gateway, wait_until

KEY = "wine-quality-1"


def split_body(rows: int) -> str:
    # Values whose text is not what json.dumps would write: kept byte for byte.
    data = ", ".join(f"[{i}.10000000000000000001, 2.5e-3, -0.0]" for i in range(rows))
    return '{"dataframe_split": {"columns": ["a", "b", "c"], "data": [' + data + "]}}"


@pytest.mark.parametrize(
    ("body", "content_type", "kept", "dropped"),
    [
        (split_body(30), "application/json", 10, 20),
        (split_body(10), "application/json", 10, 0),
        (
            json.dumps({"dataframe_records": [{"a": i, "b": "x"} for i in range(25)]}),
            "application/json",
            10,
            15,
        ),
        (
            json.dumps({"instances": [[i, [i, {"k": "v"}]] for i in range(40)]}),
            "application/json",
            10,
            30,
        ),
        (
            json.dumps({"inputs": {"a": list(range(50)), "b": ["s"] * 50}}),
            "application/json",
            10,
            40,
        ),
        ("a,b\n" + "".join(f"{i},{i}\n" for i in range(50)), "text/csv", 10, 40),
        ("a,b\n" + "\n".join(f"{i},{i}" for i in range(50)), "text/csv", 10, 40),
    ],
)
def test_the_first_rows_are_kept_as_they_were_written(
    body: str, content_type: str, kept: int, dropped: int
) -> None:
    capped, count = cap_inputs(content_type, body, 10)
    assert count == dropped
    rows = input_rows(capped, content_type)
    assert len(rows) == kept
    assert rows == input_rows(body, content_type)[:kept]
    if "split" in body:
        assert capped.startswith(body[: body.index("[0.1")])
        assert "0.10000000000000000001" in capped  # the text itself, not a re-encoding


@pytest.mark.parametrize(
    "answer",
    [
        json.dumps({"predictions": list(range(30))}),
        json.dumps(list(range(30))),
        json.dumps({"predictions": [{"a": i, "b": [i]} for i in range(30)]}),
        json.dumps({"outputs": {"y": list(range(30)), "z": list(range(30))}}),
    ],
)
def test_predictions_are_capped_the_same_way(answer: str) -> None:
    capped, dropped = cap_answer(answer, 10)
    assert dropped == 20
    assert prediction_values(capped) == prediction_values(answer)[:10]


def test_what_is_not_a_scoring_body_is_kept_whole() -> None:
    for text in ["x" * 100, '{"dataframe_split": {"data": [[1], [2],', "[" * 50, '"a"' * 30]:
        assert cap_inputs("application/json", text, 3) == (text, 0)
    body, answer, dropped = cap_call("application/json", split_body(5), '{"predictions": [1]}', 3)
    assert dropped == 2 and len(input_rows(body)) == 3 and answer == '{"predictions": [1]}'


async def test_the_writer_logs_at_most_n_rows_per_call_and_counts_the_rest(
    tmp_path: Path,
) -> None:
    store = SQLiteStore(tmp_path / "inference.db")
    await store.open()
    log = InferenceLogger(store, tmp_path / "spool", flush_interval=0.01, max_rows=100)
    await log.start()
    try:
        big = split_body(1_000).encode()
        answer = json.dumps({"predictions": [i % 3 for i in range(1_000)]}).encode()
        log.submit("m", "1", "application/json", big, answer, "big")
        log.submit("m", "1", "application/json", split_body(3).encode(), b"[0, 1, 2]", "small")
        for _ in range(1500):  # a bound, not a timing
            if log.stats.written == 2:
                break
            await asyncio.sleep(0.02)
        records = {r.request_id: r async for r in store.iter_records("m", "1")}
        assert len(input_rows(records["big"].inputs)) == 100
        assert prediction_values(records["big"].predictions) == [i % 3 for i in range(100)]
        assert (
            records["small"].inputs == split_body(3) and records["small"].predictions == "[0, 1, 2]"
        )
        assert log.stats.truncated_rows == 900
    finally:
        await log.close()
        await store.close()


# ------------------------------------------------------------------ live

CAP_ROWS = 20


@pytest.fixture(scope="module")
def capped(registry: RegistryInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = Gateway(
        tmp_path_factory.mktemp("bounds") / "data",
        registry.tracking_uri,
        extra_env={
            "GATEWAY_LOG_MAX_ROWS_PER_CALL": str(CAP_ROWS),
            "GATEWAY_LOG_FLUSH_INTERVAL": "0.05",
            # About one large call's logged text: a report reads the newest calls only.
            "GATEWAY_REPORT_MAX_MB": "0.005",
        },
    ).start()
    try:
        reply = gw.post("/deploy/wine-quality/1")
        assert reply.status == 201, (reply.body, gw.log())
        yield gw
    finally:
        gw.stop()


def rows(n: int) -> dict[str, object]:
    return {"dataframe_split": {"columns": WINE_COLUMNS, "data": [WINE_VALUES] * n}}


def test_a_large_call_is_answered_whole_and_logged_capped(capped: Gateway) -> None:
    reply = capped.post(f"/{KEY}", json_body=rows(500))
    assert reply.status == 200
    assert len(reply.json()["predictions"]) == 500

    def truncated() -> int:
        return capped.get("/health").json()["inference_log"]["truncated_rows"]

    wait_until(lambda: truncated() == 500 - CAP_ROWS, 60, what="the cut rows to be counted")
    export = capped.get(f"/model/{KEY}/dataset?format=jsonl")
    assert export.status == 200
    assert len(export.body.splitlines()) == CAP_ROWS


def test_a_report_reads_only_the_newest_calls_that_fit_its_budget(capped: Gateway) -> None:
    for _ in range(8):  # each logged call is about 1.6 KB of text: the budget holds three
        assert capped.post(f"/{KEY}", json_body=rows(CAP_ROWS)).status == 200
    wait_until(
        lambda: capped.get("/health").json()["inference_log"]["pending"] == 0, 60, what="the log"
    )
    summary = capped.get(f"/model/{KEY}/degradation_report?format=json")
    assert summary.status == 200, summary.body
    data = summary.json()["data"]
    assert data["logged_calls_capped"] is True
    assert 1 <= data["logged_calls"] < 9
