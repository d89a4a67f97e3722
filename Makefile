# Portico: `make run` starts the gateway, `make test` passes the suite; both set up what they need.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test demo bench lint setup clean system-deps

setup: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $(STAMP)

run: $(STAMP)  ## start the gateway on GATEWAY_BIND (default 127.0.0.1:8787)
	$(BIN)/gunicorn -c gunicorn.conf.py

system-deps:  ## what the tests need from Debian: redis-server (started per test run, on loopback), headless chromium
	@command -v redis-server >/dev/null || (apt-get update -qq && apt-get install -y -qq redis-server >/dev/null) || \
		(echo "the tests need redis-server: apt-get install redis-server" && exit 1)
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || \
		(echo "the tests need chromium (headless, for the dashboard test): apt-get install chromium" && exit 1)

test: $(STAMP) system-deps  ## run the whole suite (unit + integration through gunicorn)
	$(BIN)/python -m pytest -q

demo: $(STAMP)  ## fake provider + gateway + sample calls, no provider account needed
	$(BIN)/python -m bench.demo

bench: $(STAMP)  ## load benchmark: direct vs Flask floor vs Portico (needs wrk)
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk) || \
		(echo "wrk is needed for the benchmark: apt-get install wrk" && exit 1)
	$(BIN)/python -m bench.run

lint: $(STAMP)
	$(BIN)/ruff check app tests bench
	$(BIN)/mypy app

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
