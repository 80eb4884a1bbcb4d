"""A trivial fixed-response backend for measuring raw proxy capacity: nginx itself.

usage: trivial_backend.py PORT WORKDIR
Writes an nginx config answering every request with {"predictions": [0]} and
execs nginx in the foreground (so the supervisor's pid is nginx's master).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

CONFIG = """
worker_processes 1;
daemon off;
pid {work}/trivial-{port}.pid;
error_log stderr warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {work}/body-{port};
    proxy_temp_path {work}/proxy-{port};
    fastcgi_temp_path {work}/fastcgi-{port};
    uwsgi_temp_path {work}/uwsgi-{port};
    scgi_temp_path {work}/scgi-{port};
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port} reuseport;
        location / {{
            default_type application/json;
            return 200 '{{"predictions": [0]}}';
        }}
    }}
}}
"""


def main() -> None:
    port, work = int(sys.argv[1]), Path(sys.argv[2])
    work.mkdir(parents=True, exist_ok=True)
    conf = work / f"trivial-{port}.conf"
    conf.write_text(CONFIG.format(port=port, work=work))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    os.execv(nginx, [nginx, "-c", str(conf)])


if __name__ == "__main__":
    main()
