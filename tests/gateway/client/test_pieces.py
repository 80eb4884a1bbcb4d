"""The client's parts that need no gateway: input chunking, prediction output,
log-tail merging, the status line, credentials and error wording."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest

from gateway.client.commands import new_lines
from gateway.client.inputs import (
    CountingReader,
    InputError,
    csv_chunks,
    document_chunks,
    json_chunks,
    open_counted,
)
from gateway.client.render import (
    PredictionWriter,
    StatusLine,
    predictions_of,
    replica_summary,
    split_failure,
)
from gateway.client.transport import Reply, Target, _api_error, path


def reader(data: bytes) -> CountingReader:
    return CountingReader(io.BytesIO(data))


def test_csv_chunks_repeat_the_header_and_keep_quoted_fields() -> None:
    data = b'\xef\xbb\xbfa,b\n1,"x, y"\n\n2,"two\nlines"\n3,z\n'
    chunks = list(csv_chunks(reader(data), 2))
    assert [(c.first_row, c.rows, c.content_type) for c in chunks] == [
        (1, 2, "text/csv"),
        (3, 1, "text/csv"),
    ]
    assert chunks[0].body == b'a,b\n1,"x, y"\n2,"two\nlines"\n'
    assert chunks[1].body == b"a,b\n3,z\n"


def test_an_empty_csv_is_an_input_error() -> None:
    with pytest.raises(InputError, match="empty"):
        list(csv_chunks(reader(b""), 10))


@pytest.mark.parametrize("size", [1, 2, 5])
def test_json_lines_go_out_as_dataframe_records(size: int) -> None:
    records = [{"a": i, "b": f"s{i}"} for i in range(5)]
    data = ("\n" + "".join(json.dumps(r) + "\n" for r in records) + "\n").encode()
    chunks = list(json_chunks(reader(data), size))
    sent = [json.loads(c.body)["dataframe_records"] for c in chunks]
    assert [r for part in sent for r in part] == records
    assert all(len(part) <= size for part in sent)
    assert [c.first_row for c in chunks] == list(range(1, 6, size))


def test_a_bad_json_line_is_named_by_its_number() -> None:
    with pytest.raises(InputError, match="line 3 is not JSON"):
        list(json_chunks(reader(b'{"a": 1}\n{"a": 2}\n{"a": \n'), 10))
    with pytest.raises(InputError, match="line 2 is not a JSON object"):
        list(json_chunks(reader(b'{"a": 1}\n[1, 2]\n'), 10))


def test_a_one_line_mlflow_document_is_cut_by_rows_with_its_params() -> None:
    doc = {"dataframe_split": {"columns": ["a"], "index": [7, 8, 9], "data": [[1], [2], [3]]},
           "params": {"k": 1}}  # fmt: skip
    chunks = list(json_chunks(reader(json.dumps(doc).encode()), 2))
    bodies = [json.loads(c.body) for c in chunks]
    assert bodies == [
        {
            "dataframe_split": {"columns": ["a"], "index": [7, 8], "data": [[1], [2]]},
            "params": {"k": 1},
        },
        {"dataframe_split": {"columns": ["a"], "index": [9], "data": [[3]]}, "params": {"k": 1}},
    ]
    assert [(c.first_row, c.rows) for c in chunks] == [(1, 2), (3, 1)]


def test_a_document_over_several_lines_is_read_whole() -> None:
    doc = {"instances": [[1, 2], [3, 4], [5, 6]]}
    chunks = list(json_chunks(reader(json.dumps(doc, indent=2).encode()), 2))
    assert [json.loads(c.body) for c in chunks] == [
        {"instances": [[1, 2], [3, 4]]},
        {"instances": [[5, 6]]},
    ]


def test_named_tensors_go_whole_and_a_document_needs_an_mlflow_key() -> None:
    doc = {"inputs": {"x": [1, 2], "y": [3, 4]}}
    [chunk] = document_chunks(doc, 1)
    assert (json.loads(chunk.body), chunk.rows) == (doc, None)
    with pytest.raises(InputError, match="needs one of the keys"):
        list(document_chunks({"rows": []}, 1))


def test_open_counted_counts_bytes_and_names_a_missing_file(tmp_path: Path) -> None:
    file = tmp_path / "rows.csv"
    file.write_bytes(b"a\n1\n2\n")
    raw, size = open_counted(str(file))
    with raw:
        assert sum(c.rows or 0 for c in csv_chunks(raw, 1)) == 2
        assert raw.count == size == 6
    with pytest.raises(InputError, match="cannot read"):
        open_counted(str(tmp_path / "missing.csv"))


def test_predictions_of_each_answer_shape() -> None:
    assert predictions_of({"predictions": [1, 0]}) == [1, 0]
    assert predictions_of([0.5]) == [0.5]
    assert predictions_of({"predictions": {"p": [1, 2], "q": [3, 4]}}) == [
        {"p": 1, "q": 3},
        {"p": 2, "q": 4},
    ]
    with pytest.raises(ValueError):
        predictions_of({"predictions": "nope"})


@pytest.mark.parametrize(
    ("fmt", "predictions", "expected"),
    [
        ("csv", [1, 0.5], "prediction\n1\n0.5\n"),
        ("csv", [{"label": "a", "p": 0.9}], "label,p\na,0.9\n"),
        ("csv", [[0.1, 0.9]], "prediction_0,prediction_1\n0.1,0.9\n"),
        ("jsonl", [{"label": "a"}, 2], '{"label": "a"}\n2\n'),
    ],
)
def test_prediction_writer(fmt: str, predictions: list[object], expected: str) -> None:
    out = io.StringIO()
    writer = PredictionWriter(out, fmt)
    writer.write(predictions[:1])
    writer.write(predictions[1:])  # the header is written once
    assert out.getvalue() == expected


@pytest.mark.parametrize(
    ("before", "now", "fresh"),
    [
        (["a", "b"], ["a", "b"], []),
        (["a", "b"], ["a", "b", "c"], ["c"]),
        (["a", "b", "c"], ["b", "c", "d", "e"], ["d", "e"]),  # the window moved on
        (["a"], ["x", "y"], ["x", "y"]),  # nothing in common: more came than one tail
        ([], ["x"], ["x"]),
    ],
)
def test_new_lines(before: list[str], now: list[str], fresh: list[str]) -> None:
    assert new_lines(before, now) == fresh


def test_status_line_off_a_terminal_prints_changes_and_rarely_otherwise() -> None:
    now = [0.0]
    out = io.StringIO()
    line = StatusLine(out, tty=False, every=5, clock=lambda: now[0])
    line.update("starting 1s", key="starting")
    line.update("starting 2s", key="starting")
    line.update("running 3s", key="running")
    line.update("rows 10")  # no key: only every 5 s
    now[0] = 6.0
    line.update("rows 20")
    assert out.getvalue() == "starting 1s\nrunning 3s\nrows 20\n"


def test_status_line_on_a_terminal_redraws_in_place() -> None:
    out = io.StringIO()
    line = StatusLine(out, tty=True)
    line.update("one")
    line.update("two")
    line.clear()
    assert out.getvalue() == "\r\x1b[2Kone\r\x1b[2Ktwo\r\x1b[2K"


def test_replica_summary_and_failure_split() -> None:
    entry = {"status": "starting", "replicas": [{"status": "running", "healthy": True},
                                                {"status": "starting", "healthy": False}]}  # fmt: skip
    assert replica_summary(entry)[0] == "starting, 1/2 replicas ready (1 running, 1 starting)"
    assert replica_summary(None)[0] == "not listed yet"
    assert split_failure("exited with 3; last output:\nboom\n\nbang") == (
        "exited with 3",
        ["boom", "bang"],
    )
    assert split_failure("not ready after 5s") == ("not ready after 5s", [])


def test_credentials_come_from_the_environment() -> None:
    assert Target.from_env({}).url == "http://127.0.0.1:8000"
    assert Target.from_env({}).authorization is None
    env = {"GATEWAY_URL": "https://gw.example/", "GATEWAY_ADMIN_TOKEN": "t1"}
    assert Target.from_env(env) == Target("https://gw.example", "Bearer t1")
    assert Target.from_env(env, url="http://other:1").url == "http://other:1"
    inference_only = {"GATEWAY_INFERENCE_TOKEN": "t2"}
    assert Target.from_env(inference_only).authorization is None
    assert Target.from_env(inference_only, inference=True).authorization == "Bearer t2"
    basic = Target.from_env({"GATEWAY_USER": "alice", "GATEWAY_PASSWORD": "w:x"}).authorization
    assert basic == "Basic " + base64.b64encode(b"alice:w:x").decode()


def test_paths_quote_each_segment() -> None:
    assert path("deploy", "wine quality", "1") == "/deploy/wine%20quality/1"
    assert path("deploy", "m@champion") == "/deploy/m@champion"
    assert path("scale", "a/b", replicas=2, lines=None) == "/scale/a%2Fb?replicas=2"


def test_an_error_page_that_is_not_ours_still_reads_as_one_line() -> None:
    error = _api_error(Reply(401, {}, b"<html><body>401 Authorization Required</body></html>"))
    assert str(error) == "Unauthorized (HTTP 401 unauthorized)"
    ours = _api_error(Reply(404, {}, b'{"error": "deployment_not_found", "detail": "gone\\nmore"}'))
    assert str(ours) == "gone (HTTP 404 deployment_not_found)"
