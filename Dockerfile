# modelgw: the gateway and its backends in one container.
# Docker cannot run on the machines this project is developed on, so this file
# is kept simple and is not exercised by the test suite.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    GATEWAY_HOST=0.0.0.0 \
    GATEWAY_PORT=8000 \
    GATEWAY_DATA_DIR=/data

# tini reaps any orphaned grandchild, which a Python PID 1 would leave as a zombie.
RUN apt-get update && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 10001 modelgw \
    && mkdir -p /data \
    && chown modelgw:modelgw /data

# A regular (wheel) install: schema.sql and type_mapping.json travel inside the
# packages, so the sources are not needed at run time.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY supervisor ./supervisor
RUN pip install "/src[mongodb]" && rm -rf /src

USER modelgw
WORKDIR /data
VOLUME ["/data"]
# Only the API port: backends (START_PORT-END_PORT) listen on 127.0.0.1 inside.
EXPOSE 8000

HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2).status == 200 else 1)"

# On SIGTERM the gateway drains calls, flushes its log and stops its backends.
STOPSIGNAL SIGTERM
ENTRYPOINT ["tini", "--", "modelgw", "serve"]
