"""A stand-in for `mlflow models serve`: a tiny HTTP server with /ping and /invocations.

usage: fake_backend.py PORT [MODE] [HOST]
MODE: ready (default) | exit (fails at once) | never-ready (never listens) |
      stubborn (ready, and ignores SIGTERM, so only a SIGKILL ends it)
"""

from __future__ import annotations

import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self._answer(b"\n" if self.path == "/ping" else b"{}")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        self._answer(self.rfile.read(length))

    def _answer(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    port = int(sys.argv[1])
    mode = sys.argv[2] if len(sys.argv) > 2 else "ready"
    host = sys.argv[3] if len(sys.argv) > 3 else "127.0.0.1"
    print(f"fake backend starting on {port} ({mode})", flush=True)
    if mode == "exit":
        print("fatal: cannot load model", flush=True)
        sys.exit(3)
    if mode == "never-ready":
        import time

        time.sleep(3600)
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ThreadingHTTPServer((host, port), Handler).serve_forever()


if __name__ == "__main__":
    main()
