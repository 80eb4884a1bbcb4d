"""A stand-in for `mlflow models serve`: a tiny HTTP server with /ping and /invocations.

usage: fake_backend.py PORT [MODE] [HOST]
MODE: ready (default) | exit (fails at once) | never-ready (never listens) |
      stubborn (ready, and ignores SIGTERM, so only a SIGKILL ends it) |
      busy (ready, with one worker, as a single-worker scoring server has: a call and
      /ping wait for each other, so pings go unanswered while calls are worked on)

A POST body picks the work of the call: `spin:S` burns CPU for S seconds, `sleep:S`
waits S seconds without CPU; `big:N` answers a JSON string of N bytes (a large
answer, which the gateway streams); any other body is echoed. Every answer carries its
server's port in `X-Backend-Port`, so a test sees which replica answered.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Held while a request is worked on in busy mode; a no-op context otherwise.
_worker: contextlib.AbstractContextManager[object] = contextlib.nullcontext()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        with _worker:
            self._answer(b"\n" if self.path == "/ping" else b"{}")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        body = self.rfile.read(length)
        with _worker:
            _work(body)
            kind, _, size = body.partition(b":")
            self._answer(b'"' + b"x" * int(size) + b'"' if kind == b"big" else body)

    def _answer(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Backend-Port", str(self.server.server_address[1]))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def _work(body: bytes) -> None:
    kind, _, seconds = body.decode(errors="replace").partition(":")
    if kind == "sleep":
        time.sleep(float(seconds))
    elif kind == "spin":
        end = time.monotonic() + float(seconds)
        while time.monotonic() < end:
            pass


def main() -> None:
    global _worker
    port = int(sys.argv[1])
    mode = sys.argv[2] if len(sys.argv) > 2 else "ready"
    host = sys.argv[3] if len(sys.argv) > 3 else "127.0.0.1"
    print(f"fake backend starting on {port} ({mode})", flush=True)
    if mode == "exit":
        print("fatal: cannot load model", flush=True)
        sys.exit(3)
    if mode == "never-ready":
        time.sleep(3600)
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if mode == "busy":
        _worker = threading.Lock()
    ThreadingHTTPServer((host, port), Handler).serve_forever()


if __name__ == "__main__":
    main()
