"""The client's commands against a live gateway of their own: deploy with progress,
ls, scale, predict in chunks, report, logs, undeploy; output, --json and exit codes.

The tests of this module run in order on one gateway: each leaves it as the next
one expects (the lifecycle of `wine-quality-1`).
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from mlflow import MlflowClient

from tests.conftest import RegistryInfo
from tests.gateway.client.conftest import modelgw
from tests.support import REPO, WINE_COLUMNS, WINE_VALUES, Gateway, unused_port, wait_until

pytestmark = pytest.mark.integration
KEY = "wine-quality-1"


@pytest.fixture(autouse=True)
def pointed_at(own_gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> Iterator[Gateway]:
    monkeypatch.setenv("GATEWAY_URL", f"http://127.0.0.1:{own_gateway.port}")
    for name in ("GATEWAY_ADMIN_TOKEN", "GATEWAY_INFERENCE_TOKEN", "GATEWAY_USER"):
        monkeypatch.delenv(name, raising=False)
    yield own_gateway


def wine_rows(n: int, seed: int = 7) -> pd.DataFrame:
    rng = random.Random(seed)
    data = [[round(v * rng.uniform(0.7, 1.3), 4) for v in WINE_VALUES] for _ in range(n)]
    return pd.DataFrame(data, columns=WINE_COLUMNS)


def requests_answered(gw: Gateway, key: str) -> float:
    text = gw.get("/metrics").body.decode()
    found = re.search(rf'modelgw_requests_total\{{code="200",key="{key}"\}} (\S+)', text)
    found = found or re.search(rf'modelgw_requests_total\{{key="{key}",code="200"\}} (\S+)', text)
    return float(found.group(1)) if found else 0.0


def test_ls_with_nothing_deployed(own_gateway: Gateway) -> None:
    result = modelgw("ls")
    assert (result.code, result.out, result.err) == (0, "nothing is deployed\n", "")
    assert json.loads(modelgw("ls", "--json").out) == {}


def test_deploy_wait_shows_progress_until_ready(own_gateway: Gateway) -> None:
    result = modelgw("deploy", "wine-quality", "1", "--wait", "--max-batch-size", "8")
    assert result.code == 0, result.err
    # Off a terminal the progress is a line per change of the replicas' states.
    progress = result.err.splitlines()
    assert progress and all(line.startswith(f"deploying {KEY}: ") for line in progress), result.err
    assert any("starting" in line for line in progress), result.err
    assert f"{KEY}: running, 1/1 replicas ready (1 running) after " in result.out
    assert own_gateway.deployment(KEY)["status"] == "running"


def test_ls_shows_the_deployment_as_a_table_and_as_json(own_gateway: Gateway) -> None:
    result = modelgw("ls")
    assert result.code == 0
    header, row = result.out.splitlines()
    assert header.split() == [
        "KEY",
        "STATUS",
        "MODEL",
        "VERSION",
        "READY",
        "RESTARTS",
        "BATCH",
        "PORTS",
    ]
    port = own_gateway.deployment(KEY)["port"]
    assert row.split() == [KEY, "running", "wine-quality", "1", "1/1", "0", "8", str(port)]
    listed = json.loads(modelgw("ls", "--json").out)
    assert listed[KEY]["status"] == "running"


def test_deploying_a_deployed_key_again_is_answered_at_once(own_gateway: Gateway) -> None:
    result = modelgw("deploy", "wine-quality", "1", "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["key"] == KEY


def test_scale_up_and_down(own_gateway: Gateway) -> None:
    result = modelgw("scale", KEY, "2", "--json")
    assert result.code == 0, result.err
    assert len(json.loads(result.out)["replicas"]) == 2
    own_gateway.wait_running(KEY)
    assert len(own_gateway.deployment(KEY)["replicas"]) == 2
    result = modelgw("scale", KEY, "1")
    assert result.code == 0, result.err
    assert f"{KEY}: running, 1/1 replicas ready" in result.out
    assert len(own_gateway.deployment(KEY)["replicas"]) == 1


def test_predict_csv_in_chunks_equals_local_predictions(
    own_gateway: Gateway, local_model: Any, tmp_path: Path
) -> None:
    frame = wine_rows(2500)
    source = tmp_path / "rows.csv"
    frame.to_csv(source, index=False)
    before = requests_answered(own_gateway, KEY)
    result = modelgw("predict", KEY, "--csv", str(source), "--chunk-rows", "1000")
    assert result.code == 0, result.err
    rows = list(csv.reader(io.StringIO(result.out)))
    assert rows[0] == ["prediction"]
    expected = [str(p) for p in local_model.predict(frame).tolist()]
    assert [r[0] for r in rows[1:]] == expected
    assert f"{KEY}: 2,500 predictions from 3 chunk(s) in " in result.err
    # Three calls of at most 1000 rows each, not one big one.
    wait_until(lambda: requests_answered(own_gateway, KEY) - before == 3, 10, what="3 calls")


def test_predict_json_lines_prints_json_lines(
    own_gateway: Gateway, local_model: Any, tmp_path: Path
) -> None:
    frame = wine_rows(25, seed=3)
    source = tmp_path / "rows.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in frame.to_dict(orient="records")))
    result = modelgw("predict", KEY, "--json", str(source), "--chunk-rows", "10", "--quiet")
    assert result.code == 0, result.err
    assert result.err == ""
    assert [json.loads(line) for line in result.out.splitlines()] == local_model.predict(
        frame
    ).tolist()


def test_predict_rows_the_model_refuses_name_the_chunk(
    own_gateway: Gateway, tmp_path: Path
) -> None:
    source = tmp_path / "bad.csv"
    source.write_text("alcohol,colour\n13.0,red\n")
    result = modelgw("predict", KEY, "--csv", str(source))
    assert result.code == 1
    [line] = result.err.splitlines()
    assert line.startswith("modelgw predict: chunk 1 (rows 1-1) failed: ")
    assert re.search(r"\(HTTP 400 \w+\)$", line), line


def test_predict_a_file_that_is_not_there(tmp_path: Path) -> None:
    result = modelgw("predict", KEY, "--csv", str(tmp_path / "nope.csv"))
    assert result.code == 1
    assert result.err.startswith("modelgw predict: cannot read ")


def test_report_saves_the_zip_and_prints_its_summary(own_gateway: Gateway, tmp_path: Path) -> None:
    target = tmp_path / "report.zip"
    result = modelgw("report", KEY, "-o", str(target))
    assert result.code == 0, result.err
    with zipfile.ZipFile(target) as zf:
        assert {"report.html", "summary.json"} <= set(zf.namelist())
        status = json.loads(zf.read("summary.json"))["status"]
    assert result.out.startswith(f"saved {target} (")
    assert f"status: {status}" in result.out
    summary = json.loads(modelgw("report", KEY, "--json").out)
    assert summary["key"] == KEY


def test_report_of_an_unknown_key_is_a_404_line() -> None:
    result = modelgw("report", "no-such-model-9")
    assert result.code == 1
    assert result.err == ("modelgw report: model 'no-such-model' is not in the registry"
                          " (HTTP 404 model_not_found)\n")  # fmt: skip


def test_logs_prints_the_backends_recent_lines(own_gateway: Gateway) -> None:
    result = modelgw("logs", KEY, "--lines", "20")
    assert result.code == 0, result.err
    [replica] = own_gateway.get(f"/logs/{KEY}?lines=20").json()["replicas"]
    assert result.out.splitlines() == replica["log"].splitlines()
    assert "Uvicorn running on" in result.out  # the lean backend's start-up lines
    assert json.loads(modelgw("logs", KEY, "--json").out)["key"] == KEY


def test_logs_of_an_unknown_replica_is_a_404_line() -> None:
    result = modelgw("logs", KEY, "--replica", "7")
    assert result.code == 1
    assert result.err.startswith("modelgw logs: ")
    assert result.err.endswith("(HTTP 404 replica_not_found)\n")


def test_logs_follow_prints_new_lines_until_interrupted(own_gateway: Gateway) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "logs", KEY, "-f", "--interval", "0.2"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ),
    )  # fmt: skip
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(proc.stdout or []), daemon=True)
    reader.start()
    try:
        wait_until(lambda: any("Uvicorn running on" in line for line in seen), 60, what="the tail")
        # A second replica starts: its lines arrive while following, marked with its index.
        assert own_gateway.post(f"/scale/{KEY}?replicas=2").status == 200
        wait_until(lambda: any(line.startswith("[1] ") for line in seen), 60, what="replica 1")
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        reader.join(10)
        assert own_gateway.post(f"/scale/{KEY}?replicas=1").status == 200
    assert proc.returncode == 0, err
    assert err == ""
    first_start = [
        line for line in seen if "Uvicorn running on" in line and not line.startswith("[")
    ]
    assert len(first_start) == 1, seen  # nothing shown twice


def test_undeploy_then_again_is_a_404(own_gateway: Gateway) -> None:
    result = modelgw("undeploy", KEY)
    assert result.code == 0, result.err
    assert result.out.startswith(f"undeployed {KEY}")
    assert modelgw("ls").out == "nothing is deployed\n"
    again = modelgw("undeploy", KEY, "--json")
    assert again.code == 1
    assert (
        again.err == f"modelgw undeploy: '{KEY}' is not deployed (HTTP 404 deployment_not_found)\n"
    )
    assert json.loads(again.out) == {
        "error": "deployment_not_found", "detail": f"'{KEY}' is not deployed", "status": 404,
    }  # fmt: skip


def test_deploy_of_a_version_that_does_not_exist(own_gateway: Gateway) -> None:
    result = modelgw("deploy", "wine-quality", "99", "--wait")
    assert result.code == 1
    [line] = result.err.splitlines()
    assert line.startswith("modelgw deploy: deploy of wine-quality-99 failed: ")
    assert line.endswith("(HTTP 404 version_not_found)")


def test_deploy_an_alias(own_gateway: Gateway, registry: RegistryInfo) -> None:
    # An alias of its own: other tests move `champion` and `staging`.
    MlflowClient(registry.tracking_uri).set_registered_model_alias(
        "wine-quality", "cli-stable", "1"
    )
    result = modelgw("deploy", "wine-quality", "@cli-stable", "--wait")
    assert result.code == 0, result.err
    assert "wine-quality@cli-stable: running, 1/1 replicas ready" in result.out
    row = [line for line in modelgw("ls").out.splitlines() if line.startswith("wine-quality@")]
    assert row[0].split()[:5] == [
        "wine-quality@cli-stable",
        "running",
        "wine-quality",
        "1",
        "(@cli-stable)",
    ]
    assert modelgw("undeploy", "wine-quality@cli-stable").code == 0


def test_deploy_without_wait_returns_once_listed(own_gateway: Gateway) -> None:
    result = modelgw("deploy", "wine-quality", "2", "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["key"] == "wine-quality-2"
    # The gateway goes on with the deploy after the client has left.
    own_gateway.wait_running("wine-quality-2")
    assert modelgw("undeploy", "wine-quality-2").code == 0


def test_unreachable_gateway_is_one_line_and_exit_1() -> None:
    url = f"http://127.0.0.1:{unused_port()}"
    proc = subprocess.run([sys.executable, "-m", "gateway", "ls", "--url", url],
                          cwd=REPO, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr == (f"modelgw ls: cannot reach the gateway at {url}: connection refused"
                           " (set GATEWAY_URL or --url)\n")  # fmt: skip
    assert proc.stdout == ""


@pytest.mark.parametrize(
    "argv", [["scale", KEY, "zero"], ["scale", KEY, "0"], ["predict", KEY], ["deploy", "m"]]
)
def test_usage_errors_exit_2(argv: list[str]) -> None:
    result = modelgw(*argv)
    assert result.code == 2
    assert f"usage: modelgw {argv[0]}" in result.err
