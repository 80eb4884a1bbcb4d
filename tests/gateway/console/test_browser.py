"""The console in a real browser: headless Chromium (Debian's) against real gateways.

Everything the page does goes through the gateway's real API to real MLflow
backends, and every claim is checked on the gateway itself through its JSON
API, not only on the page. Screenshots are saved under test-artifacts/console/.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

import pytest

from tests.conftest import RegistryInfo
from tests.support import ONE_ROW, REPO, Gateway

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Page, Request

CHROMIUM = os.environ.get("CONSOLE_TEST_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
ARTIFACTS = REPO / "test-artifacts" / "console"
LAPTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}
DEPLOY_MS = 180_000
TOKEN = "console-admin-token-5e1f"
USER, PASSWORD = "alice", "console pass phrase 9c"
KEY = "wine-quality-1"


@pytest.fixture(scope="module")
def browser(request: pytest.FixtureRequest) -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium package")
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"console screenshots: {ARTIFACTS}")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, timeout=60_000)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def open_gateway(
    registry: RegistryInfo, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """A gateway of this module's own, with nothing deployed and auth off."""
    gw = Gateway(tmp_path_factory.mktemp("console") / "data", registry.tracking_uri).start()
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def secured_gateway(
    registry: RegistryInfo, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    import bcrypt

    root = tmp_path_factory.mktemp("console-auth")
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=5)).decode()
    (root / "htpasswd").write_text(f"{USER}:{hashed}\n")
    gw = Gateway(
        root / "data",
        registry.tracking_uri,
        extra_env={"GATEWAY_ADMIN_TOKEN": TOKEN, "GATEWAY_HTPASSWD": str(root / "htpasswd")},
    ).start()
    try:
        yield gw
    finally:
        gw.stop()


@dataclass
class Watched:
    """A page with everything it logged and requested, for the checks at the end."""

    page: Page
    origin: str
    errors: list[str] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)

    @classmethod
    def open(cls, browser: Browser, gw: Gateway, viewport: dict[str, int]) -> Watched:
        page = browser.new_page(viewport=viewport)  # type: ignore[arg-type]
        page.set_default_timeout(30_000)
        watched = cls(page, f"http://127.0.0.1:{gw.port}")
        page.on("console", watched._console)
        page.on("pageerror", lambda exc: watched.errors.append(f"page error: {exc}"))
        page.on("request", lambda request: watched.requests.append(request))
        return watched

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"console: {message.text}")

    @contextlib.contextmanager
    def failing_loads(self, status: int) -> Iterator[None]:
        """Chrome logs every 4xx/5xx answer as a console error; inside this block
        only answers with `status` are expected, and they are taken off the list."""
        before = len(self.errors)
        yield
        new = self.errors[before:]
        del self.errors[before:]
        assert new, f"expected a failed load with status {status}"
        unexpected = [e for e in new if f"status of {status}" not in e]
        assert not unexpected, unexpected

    def shot(self, name: str) -> Path:
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def assert_clean(self) -> None:
        assert not self.errors, self.errors
        foreign = [r.url for r in self.requests if not r.url.startswith(self.origin + "/")]
        assert not foreign, f"requests to another origin: {foreign}"


def _deploy_through_the_form(w: Watched, version: str, **fields: str) -> None:
    page = w.page
    page.click("nav a[data-nav=deploy]")
    page.wait_for_selector("#d-model option[value='wine-quality']", state="attached")
    page.select_option("#d-model", "wine-quality")
    page.wait_for_selector(f"#d-version option[value='{version}']", state="attached")
    page.select_option("#d-version", version)
    page.select_option("#d-env", fields.get("env", ""))
    page.fill("#d-replicas", fields.get("replicas", "1"))
    page.fill("#d-batch", fields.get("batch", "1"))
    page.fill("#d-delay", fields.get("delay", "5"))
    page.click("#d-submit")
    page.wait_for_selector("#d-progress:not([hidden])", timeout=10_000)
    page.wait_for_selector("#d-result:not([hidden])", timeout=DEPLOY_MS)


def test_console_deploys_watches_scales_and_undeploys(
    browser: Browser, open_gateway: Gateway
) -> None:
    gw = open_gateway
    w = Watched.open(browser, gw, LAPTOP)
    page = w.page
    page.goto(f"{w.origin}/ui/")
    page.wait_for_selector("#no-deployments:not([hidden])")
    assert page.inner_text("#sum-deployments") == "0"

    # Deploy from the registry: progress, then the answer; the gateway really runs it.
    _deploy_through_the_form(w, "1", batch="4", delay="2")
    assert "result-ok" in (page.get_attribute("#d-result", "class") or "")
    entry = gw.wait_running(KEY)
    assert entry["batching"]["max_batch_size"] == 4
    assert entry["batching"]["max_batch_delay_ms"] == 2

    # A deploy that fails shows the error and the backend's last output.
    if not shutil.which("conda"):  # without conda, `--env-manager conda` exits at once
        with w.failing_loads(502):
            _deploy_through_the_form(w, "2", env="conda")
        assert "result-bad" in (page.get_attribute("#d-result", "class") or "")
        detail = page.inner_text("#d-error")
        assert "last output" in detail and "conda" in detail.lower(), detail
        assert gw.deployment("wine-quality-2") is None
        w.shot("deploy-failed")

    # The overview lists the real deployment, with figures once it has traffic.
    for _ in range(30):
        assert gw.post(f"/{KEY}", json_body=ONE_ROW).status == 200
    page.click("nav a[data-nav=overview]")
    card = page.locator(f".dep[data-key='{KEY}']")
    card.locator(".badge.running").wait_for()
    assert "#0 running · local" in card.inner_text()
    assert "batching ≤ 4 rows, ≤ 2 ms" in card.inner_text()
    page.wait_for_function(
        "key => { const c = document.querySelector(`.dep[data-key='${key}'] .metrics strong`);"
        " return c && c.textContent !== '\\u2013'; }",  # an en dash: no figure yet
        arg=KEY,
    )
    assert page.inner_text("#sum-deployments") == "1"
    w.shot("overview-laptop")

    # One deployment: the try-it form, from the signature and from a logged call.
    card.locator("a").first.click()
    page.wait_for_selector("#dep-status.running")
    page.click("#try-signature")
    page.wait_for_function("() => document.querySelector('#try-body').value.includes('alcohol')")
    page.click("#try-send")
    page.wait_for_selector("#try-result:not([hidden])")
    assert page.inner_text("#try-status").startswith("200"), page.inner_text("#try-result")
    assert "predictions" in page.inner_text("#try-result")
    page.click("#try-example")
    page.wait_for_function("() => document.querySelector('#try-body').value.includes('750')")
    page.click("#try-send")
    page.wait_for_function(
        "() => document.querySelector('#try-status').textContent.startsWith('200')"
    )
    assert "predictions" in page.inner_text("#try-result")

    # The backend's log, the drift summary and the charts are there.
    port = str(gw.deployment(KEY)["replicas"][0]["port"])  # type: ignore[index]
    page.wait_for_function(
        "port => document.querySelector('#log-text').textContent.includes(port)", arg=port
    )
    page.wait_for_selector("#drift-status", timeout=60_000)
    page.wait_for_selector("#chart-latency :is(path.line, circle.dot)")
    page.wait_for_selector("#chart-traffic path.line")
    w.shot("deployment-laptop")

    # Scale to two replicas from the page.
    page.fill("#scale-replicas", "2")
    page.click("#scale-submit")
    page.wait_for_function(
        "() => document.querySelector('#scale-status').textContent.includes('runs 2 replica')",
        timeout=DEPLOY_MS,
    )
    scaled = gw.wait_running(KEY)
    assert len(scaled["replicas"]) == 2
    assert all(r["status"] == "running" for r in scaled["replicas"])
    page.wait_for_function("() => document.querySelectorAll('#dep-replicas tbody tr').length === 2")

    # The same pages at a phone's width: nothing wider than the screen.
    phone = Watched.open(browser, gw, PHONE)
    views = (("overview-phone", "#/", "#view-overview .badge.running"),
             ("deployment-phone", f"#/d/{KEY}", "#dep-status.running"))  # fmt: skip
    for name, route, ready in views:
        phone.page.goto(f"{phone.origin}/ui/{route}")
        phone.page.wait_for_selector(ready)
        phone.page.wait_for_timeout(500)  # let the charts and panels fill in
        width = phone.page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"{name} is {width}px wide"
        phone.shot(name)
    phone.assert_clean()
    phone.page.close()

    # Undeploy asks first; cancelling keeps the deployment.
    page.click("#dep-undeploy")
    page.wait_for_selector("#confirm[open]")
    page.click("#confirm-cancel")
    assert gw.deployment(KEY) is not None
    page.click("#dep-undeploy")
    page.click("#confirm-ok")
    page.wait_for_selector("#no-deployments:not([hidden])", timeout=60_000)
    assert page.evaluate("() => location.hash") == "#/"
    assert gw.deployment(KEY) is None
    w.assert_clean()
    page.close()


def test_console_files_are_open_and_its_data_is_not(secured_gateway: Gateway) -> None:
    gw = secured_gateway
    for path in ("/ui/", "/ui/console.js", "/ui/console.css", "/ui/api/auth"):
        assert gw.get(path).status == 200, path
    assert gw.get("/ui/api/auth").json() == {
        "required": True,
        "methods": ["bearer", "basic"],
        "inference_required": True,
    }
    for path in ("/ui/api/stats", f"/ui/api/example/{KEY}", f"/logs/{KEY}"):
        reply = gw.get(path)
        assert reply.status == 401 and reply.json()["error"] == "unauthorized", path
        assert gw.get(path, headers={"Authorization": f"Bearer {TOKEN}"}).status != 401


def test_console_asks_for_the_token_and_keeps_it_out_of_urls(
    browser: Browser, secured_gateway: Gateway
) -> None:
    gw = secured_gateway
    w = Watched.open(browser, gw, LAPTOP)
    page = w.page
    page.goto(f"{w.origin}/ui/")
    # The page knows up front that it needs credentials: no call is refused first.
    page.wait_for_selector("#signin:not([hidden])")
    assert not w.errors
    w.shot("signin")

    with w.failing_loads(401):
        page.fill("#signin-token", "not-the-token")
        page.click("#signin-submit")
        page.wait_for_selector("#signin-error:not([hidden])")
    assert "Not accepted" in page.inner_text("#signin-error")
    signed_out_requests = len(w.requests)

    page.fill("#signin-token", TOKEN)
    page.click("#signin-submit")
    page.wait_for_selector("#view-overview:not([hidden])")
    page.wait_for_selector("#no-deployments:not([hidden])")
    page.click("nav a[data-nav=deploy]")
    _wait_for_the_registry(page)
    # A reload keeps the credentials of this tab; signing out forgets them.
    page.reload()
    _wait_for_the_registry(page)
    assert page.is_hidden("#signin")
    page.click("#signout")
    page.wait_for_selector("#signin:not([hidden])")
    assert page.evaluate("() => sessionStorage.length") == 0

    bearer_calls = [r for r in w.requests[signed_out_requests:] if _is_api(r.url)]
    assert {_path(r.url) for r in bearer_calls} >= {
        "/get_deployed_models", "/get_model_list", "/get_model_version_list/wine-quality",
        "/ui/api/stats",
    }  # fmt: skip
    for call in bearer_calls:
        assert call.all_headers().get("authorization") == f"Bearer {TOKEN}", call.url

    # An htpasswd account works too, as HTTP Basic.
    before_basic = len(w.requests)
    page.click("#signin [data-method=basic]")
    page.fill("#signin-user", USER)
    page.fill("#signin-password", PASSWORD)
    page.click("#signin-submit")
    _wait_for_the_registry(page)
    basic = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    basic_calls = [r for r in w.requests[before_basic:] if _is_api(r.url)]
    assert basic_calls
    for call in basic_calls:
        assert call.all_headers().get("authorization") == basic, call.url

    urls = [r.url for r in w.requests] + [page.url]
    secrets = (TOKEN, PASSWORD, quote(PASSWORD), basic.split()[1])
    assert not [u for u in urls if any(s in u for s in secrets)], urls
    w.assert_clean()
    page.close()


def _wait_for_the_registry(page: Page) -> None:
    """The deploy form lists wine-quality's versions (other tests may register more models)."""
    page.wait_for_selector(
        "#d-model option[value='wine-quality']", state="attached", timeout=60_000
    )
    page.select_option("#d-model", "wine-quality")
    page.wait_for_selector("#d-version option[value='2']", state="attached", timeout=60_000)


def _path(url: str) -> str:
    return urlsplit(url).path


def _is_api(url: str) -> bool:
    path = _path(url)
    static = path in ("/ui/", "/ui/api/auth") or (path.startswith("/ui/") and "." in path)
    return not static
