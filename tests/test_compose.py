"""The compose stack, checked with the real tools since Docker cannot run here:
`docker-compose config` (Debian's docker-compose) validates compose.yaml against the
compose schema; `promtool` checks the Prometheus config, the alert rules and the
dashboard's queries and runs the alerts' unit tests; nginx runs the stack's own
site config (TLS, basic auth) in front of a live gateway on loopback.

`make test` installs docker-compose, nginx and promtool (see the Makefile).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import yaml
from prometheus_client import CollectorRegistry

from gateway.edge.telemetry import GatewayMetrics
from tests.gateway.client.conftest import modelgw
from tests.support import REPO, Gateway, unused_port, wait_until

COMPOSE = REPO / "compose"
DASHBOARD = COMPOSE / "grafana" / "dashboards" / "modelgw.json"
# Made by the operator before the first `up` (README, "Compose stack"); never committed.
OPERATOR_MADE = {COMPOSE / "nginx" / "htpasswd", COMPOSE / "tls"}


def tool(name: str) -> str:
    """The tool's path: in the venv (promtool is unpacked there) or on PATH."""
    found = shutil.which(name, path=f"{REPO / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}")
    assert found, f"{name} is not installed: `make test` installs it (see the Makefile)"
    return found


def compose_config(
    file: Path, env: dict[str, str] | None = None, *args: str
) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "GRAFANA_ADMIN_PASSWORD": "not-a-real-password", **(env or {})}
    return subprocess.run([tool("docker-compose"), "--project-directory", str(REPO), "-f", str(file),
                           "config", *args], capture_output=True, text=True, timeout=120,
                          env=environment, cwd=REPO)  # fmt: skip


# ---------------------------------------------------------------- compose.yaml


def test_compose_file_is_valid() -> None:
    result = compose_config(REPO / "compose.yaml", None, "-q")
    assert result.returncode == 0, result.stderr


def test_the_validator_refuses_a_broken_file(tmp_path: Path) -> None:
    # Proof that the check above can fail: one misspelt key in a service.
    broken = tmp_path / "compose.yaml"
    text = (REPO / "compose.yaml").read_text()
    broken.write_text(
        text.replace("    restart: unless-stopped\n", "    restrat: unless-stopped\n", 1)
    )
    result = compose_config(broken, None, "-q")
    assert result.returncode != 0
    assert "restrat" in result.stderr


def test_the_grafana_password_must_be_set() -> None:
    result = compose_config(REPO / "compose.yaml", {"GRAFANA_ADMIN_PASSWORD": ""}, "-q")
    assert result.returncode != 0
    assert "set GRAFANA_ADMIN_PASSWORD" in result.stderr


def resolved() -> dict[str, Any]:
    result = compose_config(REPO / "compose.yaml")
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_the_stack_has_every_service_and_mounts_files_of_the_repo() -> None:
    config = resolved()
    services = config["services"]
    assert set(services) == {"gateway", "mlflow", "mongo", "prometheus", "grafana", "nginx"}
    assert Path(services["gateway"]["build"]["context"]) == REPO
    assert (REPO / "Dockerfile").is_file()
    gateway_env = services["gateway"]["environment"]
    assert gateway_env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert gateway_env["MONGODB_URI"] == "mongodb://mongo:27017"
    assert "--serve-artifacts" in services["mlflow"]["command"]
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume["source"]
            if not source.startswith("/"):
                continue  # a named volume
            path = Path(source)
            assert path.exists() or path in OPERATOR_MADE, (
                f"{name} mounts {source}, which is missing"
            )
    # Only nginx is on every interface; the operator's tools on loopback only.
    for name, service in services.items():
        for port in service.get("ports", []):
            published = (
                port if isinstance(port, str) else f"{port.get('host_ip', '')}:{port['published']}"
            )
            assert name == "nginx" or published.startswith("127.0.0.1:"), (name, port)
    assert "ports" not in services["gateway"] and "ports" not in services["mongo"]


# ------------------------------------------------------------ Prometheus, Grafana


def test_prometheus_config_and_its_rules_pass_promtool(tmp_path: Path) -> None:
    # Laid out as compose.yaml mounts them in the container's /etc/prometheus.
    for source, mounted in ((COMPOSE / "prometheus.yml", "prometheus.yml"),
                            (COMPOSE / "alerts.yml", "alerts.yml"),
                            (REPO / "docs" / "prometheus-alerts.yml", "quality-alerts.yml")):  # fmt: skip
        shutil.copy(source, tmp_path / mounted)
    result = subprocess.run([tool("promtool"), "check", "config", str(tmp_path / "prometheus.yml")],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 2 rule files found" in result.stdout + result.stderr
    mounts = yaml.safe_load((REPO / "compose.yaml").read_text())["services"]["prometheus"][
        "volumes"
    ]
    assert "./docs/prometheus-alerts.yml:/etc/prometheus/quality-alerts.yml:ro" in mounts


def test_every_alert_fires_in_its_unit_test() -> None:
    result = subprocess.run([tool("promtool"), "test", "rules", str(COMPOSE / "alerts_test.yml")],
                            capture_output=True, text=True, timeout=60, cwd=COMPOSE)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    alerts = {r["alert"] for g in yaml.safe_load((COMPOSE / "alerts.yml").read_text())["groups"]
              for r in g["rules"]}  # fmt: skip
    tests = yaml.safe_load((COMPOSE / "alerts_test.yml").read_text())["tests"]
    for case in tests:  # a healthy case and a troubled one, each naming every alert
        assert {t["alertname"] for t in case["alert_rule_test"]} == alerts, case["name"]
    fired = {t["alertname"] for case in tests for t in case["alert_rule_test"] if t["exp_alerts"]}
    assert fired == alerts


def exported_series() -> set[str]:
    """The names of every series the gateway's registry can export."""
    metrics = GatewayMetrics(CollectorRegistry())
    metrics.watch({}, lambda: None)
    names = set()
    for family in metrics.registry.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
        names.update(family.name + s for s in suffixes.get(family.type, [""]))
    return names


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    queries += [v["definition"] for v in dashboard["templating"]["list"]]
    return queries


def test_alerts_and_dashboard_use_only_metrics_the_gateway_exports() -> None:
    exported = exported_series()
    used = set(re.findall(r"\bmodelgw_\w+", (COMPOSE / "alerts.yml").read_text()))
    used |= {name for q in dashboard_queries() for name in re.findall(r"\bmodelgw_\w+", q)}
    assert used, "no modelgw metric is used"
    assert used <= exported, f"not exported by the gateway: {sorted(used - exported)}"


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 10
    # Grafana's variables as Grafana would fill them, then each query as a recording rule.
    filled = [e.replace("$__rate_interval", "1m").replace("$key", ".*") for e in exprs]
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(filled)]}]}  # fmt: skip
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run([tool("promtool"), "check", "rules", str(path)],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    # The data source the dashboard names is the one Grafana is provisioned with.
    provisioned = yaml.safe_load(
        (COMPOSE / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    uids = {d["uid"] for d in provisioned["datasources"]}
    named = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p.get("targets", [])}
    assert named == uids == {"prometheus"}
    provider = yaml.safe_load((COMPOSE / "grafana/provisioning/dashboards/modelgw.yml").read_text())
    mounted = resolved()["services"]["grafana"]["volumes"]
    target = provider["providers"][0]["options"]["path"]
    assert any(v.endswith(f"{target}:ro") and v.startswith(str(DASHBOARD.parent)) for v in mounted)


# -------------------------------------------------------------------- nginx


def tls_files(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate made with the README's openssl line."""
    directory.mkdir()
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)  # fmt: skip
    return cert, key


def site_config(gateway_port: int, http_port: int, https_port: int, tmp: Path) -> str:
    """compose/nginx/modelgw.conf with the container's names and paths made local."""
    text = (COMPOSE / "nginx" / "modelgw.conf").read_text()
    for old, new in [("server gateway:8000;", f"server 127.0.0.1:{gateway_port};"),
                     ("listen 80;", f"listen 127.0.0.1:{http_port};"),
                     ("listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;"),
                     ("/etc/nginx/tls/cert.pem", str(tmp / "tls" / "cert.pem")),
                     ("/etc/nginx/tls/key.pem", str(tmp / "tls" / "key.pem")),
                     ("/etc/nginx/htpasswd", str(tmp / "htpasswd"))]:  # fmt: skip
        assert text.count(old) == 1, f"modelgw.conf no longer has {old!r} once"
        text = text.replace(old, new)
    return text


@pytest.fixture(scope="module")
def nginx_in_front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp_path = tmp_path_factory.mktemp("nginx")
    tls_files(tmp_path / "tls")
    (tmp_path / "htpasswd").write_text(
        "alice:" + bcrypt.hashpw(b"wonderland", bcrypt.gensalt(rounds=4)).decode() + "\n"
    )
    gw = Gateway(tmp_path / "data", f"sqlite:///{tmp_path / 'mlflow.db'}",
                 extra_env={"GATEWAY_HTPASSWD": str(tmp_path / "htpasswd")}).start()  # fmt: skip
    http_port, https_port = unused_port(), unused_port()
    (tmp_path / "modelgw.conf").write_text(site_config(gw.port, http_port, https_port, tmp_path))
    # Root's nginx hands requests to `nobody`, who cannot read a private temp dir.
    user = "user root;" if os.geteuid() == 0 else ""
    (tmp_path / "nginx.conf").write_text(f"""
        {user}
        worker_processes 1;
        pid {tmp_path}/nginx.pid;
        error_log {tmp_path}/error.log;
        events {{ worker_connections 64; }}
        http {{
            access_log {tmp_path}/access.log;
            client_body_temp_path {tmp_path}/body; proxy_temp_path {tmp_path}/proxy;
            fastcgi_temp_path {tmp_path}/fastcgi; uwsgi_temp_path {tmp_path}/uwsgi;
            scgi_temp_path {tmp_path}/scgi;
            include {tmp_path}/modelgw.conf;
        }}
    """)
    command = [tool("nginx"), "-p", str(tmp_path), "-e", str(tmp_path / "error.log"),
               "-c", str(tmp_path / "nginx.conf")]  # fmt: skip
    checked = subprocess.run([*command, "-t"], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr
    proc = subprocess.Popen([*command, "-g", "daemon off;"], stderr=subprocess.PIPE)
    try:
        wait_until(lambda: _accepts(https_port), 30, what="nginx to listen")
        yield {"https": https_port, "http": http_port, "cert": tmp_path / "tls" / "cert.pem",
               "gateway": gw}  # fmt: skip
    finally:
        proc.send_signal(signal.SIGQUIT)  # graceful: finish what is in flight
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
        gw.stop()


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def https_get(
    port: int, path: str, cert: Path, **headers: str
) -> tuple[int, dict[str, str], bytes]:
    context = ssl.create_default_context(cafile=str(cert))
    request = urllib.request.Request(f"https://127.0.0.1:{port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, context=context, timeout=30) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_nginx_terminates_tls_and_asks_for_basic_auth(nginx_in_front: dict[str, Any]) -> None:
    port, cert = nginx_in_front["https"], nginx_in_front["cert"]
    status, _, body = https_get(port, "/health", cert)
    assert (status, json.loads(body)["status"]) == (200, "ok")  # open, for load balancers
    status, headers, _ = https_get(port, "/get_deployed_models", cert)
    assert status == 401 and headers["www-authenticate"].startswith("Basic")
    status, _, _ = https_get(port, "/get_deployed_models", cert,
                             Authorization=basic("alice", "not-her-password"))  # fmt: skip
    assert status == 401
    status, headers, body = https_get(port, "/get_deployed_models", cert,
                                      Authorization=basic("alice", "wonderland"),
                                      **{"X-Request-ID": "from-the-caller-42"})  # fmt: skip
    assert (status, json.loads(body)) == (200, {})
    assert headers["x-request-id"] == "from-the-caller-42"  # one id end to end


def test_nginx_sends_plain_http_to_https(nginx_in_front: dict[str, Any]) -> None:
    with socket.create_connection(("127.0.0.1", nginx_in_front["http"]), timeout=10) as sock:
        sock.sendall(
            b"GET /get_deployed_models HTTP/1.1\r\nHost: models.example\r\nConnection: close\r\n\r\n"
        )
        answer = sock.makefile("rb").read().decode()
    assert answer.startswith("HTTP/1.1 301")
    assert "Location: https://models.example/get_deployed_models" in answer


def test_the_client_works_through_nginx(
    nginx_in_front: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_URL", f"https://127.0.0.1:{nginx_in_front['https']}")
    monkeypatch.delenv("GATEWAY_ADMIN_TOKEN", raising=False)
    monkeypatch.setenv("GATEWAY_USER", "alice")
    monkeypatch.setenv("GATEWAY_PASSWORD", "wonderland")
    untrusted = modelgw("ls")  # a self-signed certificate is refused until trusted
    assert untrusted.code == 1
    assert "SSL_CERT_FILE" in untrusted.err
    monkeypatch.setenv("SSL_CERT_FILE", str(nginx_in_front["cert"]))
    result = modelgw("ls")
    assert (result.code, result.out) == (0, "nothing is deployed\n"), result.err
    monkeypatch.setenv("GATEWAY_PASSWORD", "guess")
    refused = modelgw("ls")
    assert refused.code == 1
    assert "(HTTP 401 unauthorized)" in refused.err
