# Two commands do everything on a fresh machine with Python 3.11+:
#   make run   - install, register a demo model, serve it on 127.0.0.1:8000
#   make test  - install test dependencies, lint, run the whole suite (it builds the
#                wheel and installs it into a fresh venv: see tests/packaging)
#   make wheel - dist/modelgw-<version>-py3-none-any.whl, for `pip install` elsewhere
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stamp

.PHONY: run test lint format bench wheel clean

$(STAMP)-install: pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit("Python 3.11+ is required") if sys.version_info < (3, 11) else None'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

$(STAMP)-test: $(STAMP)-install
	$(PY) -m pip install --quiet -e '.[test]'
	@# Evidently is only compared against in one test, which skips without it.
	$(PY) -m pip install --quiet -e '.[evidently]' \
	  || echo "Evidently did not install: tests/gateway/quality/test_drift_evidently.py will skip"
	touch $@

run: $(STAMP)-install
	$(VENV)/bin/modelgw demo

lint: $(STAMP)-test
	$(VENV)/bin/ruff check gateway supervisor tests bench
	$(VENV)/bin/ruff format --check gateway supervisor tests bench
	$(VENV)/bin/mypy

format: $(STAMP)-test
	$(VENV)/bin/ruff format gateway supervisor tests bench
	$(VENV)/bin/ruff check --fix gateway supervisor tests bench

# The Ray cluster tests (marker `cluster`) run after the rest, inside a private network
# namespace (`test-cluster` below); the main run skips them.
test: lint chromium
	$(VENV)/bin/pytest
	$(MAKE) test-cluster

# The console's browser test drives Debian's chromium (Playwright never downloads one).
.PHONY: chromium
chromium:
	@command -v chromium >/dev/null || { \
	  echo "installing chromium from the system's packages"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq chromium; fi; }

# The compose stack's checks (tests/test_compose.py) run Debian's docker-compose (to
# validate compose.yaml), nginx (the stack's site config in front of a live gateway) and
# promtool, unpacked from Debian's prometheus package into the venv, so no Prometheus
# server is installed or started.
.PHONY: compose-tools
test: compose-tools
compose-tools: $(STAMP)-install
	@command -v docker-compose >/dev/null && command -v nginx >/dev/null \
	  && command -v openssl >/dev/null || { \
	  echo "installing docker-compose, nginx and openssl from the system's packages"; \
	  sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$sudo apt-get update -qq \
	  && $$sudo apt-get install -y -qq --no-install-recommends docker-compose nginx openssl; }
	@test -x $(VENV)/bin/promtool || { \
	  echo "unpacking promtool from the system's prometheus package"; \
	  sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  dir=$$(mktemp -d) && chmod 755 $$dir && $$sudo apt-get update -qq \
	  && (cd $$dir && apt-get download -qq prometheus) \
	  && dpkg-deb --fsys-tarfile $$dir/prometheus_*.deb | tar -xO ./usr/bin/promtool > $(VENV)/bin/promtool.part \
	  && chmod +x $(VENV)/bin/promtool.part && mv $(VENV)/bin/promtool.part $(VENV)/bin/promtool; \
	  status=$$?; rm -rf $$dir; exit $$status; }

# The monitoring tests start a real Prometheus server (on loopback, with a temporary
# config) to scrape a live gateway and evaluate docs/prometheus-alerts.yml; Debian's
# prometheus package gives /usr/bin/prometheus and /usr/bin/promtool (no service is
# started: there is no init system here).
.PHONY: prometheus
test: prometheus
prometheus:
	@command -v /usr/bin/prometheus >/dev/null || { \
	  echo "installing prometheus from the system's packages"; \
	  sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$sudo apt-get update -qq \
	  && $$sudo apt-get install -y -qq --no-install-recommends prometheus; }

# Ray's servers listen on every interface, so the tests that start Ray (marker `cluster`:
# tests/cluster and the Ray subject of the placement contract) run in a private network
# namespace with nothing but loopback, where the main run above skips them. `unshare -n`
# needs root (CI runs as root); without it a user namespace stands in (`unshare -rn`)
# and the two-host test, which needs real root for `ip netns`, skips. iproute2 gives `ip`.
.PHONY: test-cluster iproute2
test-cluster: $(STAMP)-test iproute2
	@if [ "$$(id -u)" = 0 ]; then ns="unshare -n"; else ns="unshare -rn"; fi; \
	$$ns sh -c 'ip link set lo up && exec $(VENV)/bin/pytest -m cluster tests/cluster tests/supervisor/test_placement_contract.py'
iproute2:
	@command -v ip >/dev/null || { \
	  echo "installing iproute2 from the system's packages"; \
	  sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$sudo apt-get update -qq && $$sudo apt-get install -y -qq --no-install-recommends iproute2; }

# Benchmarks are not tests: they print figures and never fail on a threshold.
bench: $(STAMP)-test iproute2
	@command -v wrk >/dev/null && command -v nginx >/dev/null || { \
	  echo "installing wrk and nginx from the system's packages"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq wrk nginx; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq wrk nginx; fi; }
	$(PY) bench/run.py $(BENCH_ARGS)

# The soak (issue 14): steady load at c=32 with faults on a schedule, within 10 minutes,
# on loopback only; as root, a small tmpfs on the spool stands for a full disk (skipped
# and reported otherwise). It prints figures and never fails on one.
# `make soak SOAK_ARGS="--minutes 3"` runs the shortest schedule.
.PHONY: soak
soak: $(STAMP)-install
	$(PY) -m bench.soak $(SOAK_ARGS)

wheel: $(STAMP)-install
	$(PY) -m pip wheel --no-deps --quiet -w dist .

clean:
	rm -rf $(VENV) gateway-data .pytest_cache .ruff_cache .mypy_cache build dist *.egg-info
