"""The README's examples work as written: the files they send exist, every inference
path has a curl line, and those lines answer when sent to a live gateway."""

from __future__ import annotations

import base64
import re
import shlex
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import pytest

from tests.support import REPO, Gateway

README = (REPO / "README.md").read_text()
INFERENCE_PATHS = ["/wine-quality-1", "/wine-quality-1/invocations", "/model/wine-quality-1"]


@dataclass
class Curl:
    """One curl command of the README, parsed for the options it uses."""

    url: str
    method: str = "GET"
    headers: dict[str, str] = field(default_factory=dict)
    data: str | None = None  # as written: "@path" sends a file

    @property
    def path(self) -> str:
        parts = urlsplit(self.url)
        return parts.path + (f"?{parts.query}" if parts.query else "")

    def body(self) -> bytes | None:
        if self.data is None or not self.data.startswith("@"):
            return None if self.data is None else self.data.encode()
        return (REPO / self.data[1:]).read_bytes()


def commands(text: str) -> list[list[str]]:
    """Each shell command of the README's bash blocks, split as the shell would."""
    found: list[list[str]] = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        pending = ""
        for line in block.splitlines():
            pending += line + "\n"
            try:
                words = shlex.split(pending.replace("\\\n", " "), comments=True)
            except ValueError:  # a quote spans lines: read on
                continue
            if "|" in words:  # a pipe: the README's command is what comes before it
                words = words[: words.index("|")]
            if words:
                found.append(words)
            pending = ""
        assert not pending.strip(), f"unclosed quote in a README block: {pending[:80]}"
    return found


def curls(text: str, base: str) -> list[Curl]:
    """The curl commands, with shell variables set as the README sets them ($B is `base`)."""
    variables: dict[str, str] = {}
    parsed = []
    for words in commands(text):
        if len(words) == 1 and re.fullmatch(r"[A-Z_]+=.*", words[0], re.S):
            name, value = words[0].split("=", 1)
            variables[name] = base if name == "B" else value
            continue
        if words[0] != "curl":
            continue
        expand = lambda w: re.sub(r"\$(\w+)", lambda m: variables[m.group(1)], w)  # noqa: E731
        parsed.append(_curl([expand(w) for w in words[1:]]))
    return parsed


def _curl(args: list[str]) -> Curl:
    it = iter(args)
    url, method, headers, data = None, None, {}, None
    for arg in it:
        if arg in ("-s", "-OJ"):
            continue
        if arg == "-X":
            method = next(it)
        elif arg == "-H":
            name, value = next(it).split(":", 1)
            headers[name.strip()] = value.strip()
        elif arg in ("-d", "--data-binary"):
            data = next(it)
        elif arg == "-o":
            next(it)
        elif arg == "-u":
            headers["Authorization"] = "Basic " + base64.b64encode(next(it).encode()).decode()
        elif arg.startswith("-"):
            raise AssertionError(f"a curl option this test does not know: {arg}")
        else:
            url = arg
    assert url is not None, args
    return Curl(url, method or ("POST" if data is not None else "GET"), headers, data)


def test_every_file_the_readme_sends_exists() -> None:
    sent = [c.data[1:] for c in curls(README, "http://h") if c.data and c.data.startswith("@")]
    assert sent, "the README sends no file"
    missing = [name for name in sent if not (REPO / name).is_file()]
    assert not missing, f"the README sends files that do not exist: {missing}"


def test_every_inference_path_has_a_curl_line() -> None:
    posted = {c.path for c in curls(README, "http://h") if c.method == "POST"}
    missing = [path for path in INFERENCE_PATHS if path not in posted]
    assert not missing, f"no curl example for POST {missing}"


@pytest.mark.integration
def test_the_readme_inference_lines_answer_as_written(gateway: Gateway) -> None:
    lines = [c for c in curls(README, f"http://127.0.0.1:{gateway.port}")
             if c.method == "POST" and c.path in INFERENCE_PATHS]  # fmt: skip
    for curl in lines:
        reply = gateway.request(curl.method, curl.path, body=curl.body(), headers=curl.headers)
        assert reply.status == 200, (curl, reply.body)
        assert reply.json()["predictions"], (curl, reply.body)
