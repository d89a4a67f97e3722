# Portico: `make run` starts the gateway, `make test` passes the suite; both set up what they need.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/pip install --quiet --disable-pip-version-check
# Two stamps: the gateway's own packages (requirements.txt), then the tests' and tools' (requirements-dev.txt),
# so `make run` on a fresh clone installs only what the gateway runs on.
RUNTIME := $(VENV)/.runtime
DEV     := $(VENV)/.dev

.PHONY: run test demo bench lint setup clean system-deps

setup: $(DEV)

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || \
		(echo "Portico needs Python 3.11 or newer; $(PYTHON) is $$($(PYTHON) -V 2>&1 || echo missing)." \
		      "Choose another with e.g. make PYTHON=python3.12 run" && exit 1)
	$(PYTHON) -m venv $(VENV)

$(RUNTIME): requirements.txt | $(BIN)/python
	$(PIP) -r requirements.txt
	touch $@

$(DEV): requirements-dev.txt $(RUNTIME)
	$(PIP) -r requirements-dev.txt
	touch $@

run: $(RUNTIME)  ## start the gateway on GATEWAY_BIND (default 127.0.0.1:8787); runtime packages only
	$(BIN)/gunicorn -c gunicorn.conf.py

system-deps:  ## what the tests need from Debian: redis-server (started per test run, on loopback), headless chromium, nginx
	@command -v redis-server >/dev/null || (echo "installing from Debian: redis-server (needed by the tests)" && \
		apt-get update -qq && apt-get install -y -qq redis-server >/dev/null) || \
		(echo "the tests need redis-server: apt-get install redis-server" && exit 1)
	@command -v chromium >/dev/null || (echo "installing from Debian: chromium (needed by the tests)" && \
		apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || \
		(echo "the tests need chromium (headless, for the dashboard test): apt-get install chromium" && exit 1)
	@# nginx is in /usr/sbin, off a non-root PATH. Debian starts (and enables) its own nginx service on
	@# port 80 after installing; the tests do not use it: they start nginx on loopback ports themselves.
	@command -v nginx >/dev/null || test -x /usr/sbin/nginx || (echo "installing from Debian: nginx (needed by" \
		"the deploy tests, tests/integration/test_deploy_nginx.py)" && \
		apt-get update -qq && apt-get install -y -qq nginx >/dev/null) || \
		(echo "the tests need nginx (the deploy kit runs behind a real one): apt-get install nginx" && exit 1)

test: $(DEV) system-deps  ## run the whole suite (unit + integration through gunicorn)
	$(BIN)/python -m pytest -q

demo: $(RUNTIME)  ## fake provider + gateway + sample calls, no provider account needed (runtime packages only)
	$(BIN)/python -m bench.demo

bench: $(DEV)  ## load benchmark: direct vs Flask floor vs Portico (needs wrk)
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk) || \
		(echo "wrk is needed for the benchmark: apt-get install wrk" && exit 1)
	$(BIN)/python -m bench.run

lint: $(DEV)
	$(BIN)/ruff check app tests bench
	$(BIN)/mypy app

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
