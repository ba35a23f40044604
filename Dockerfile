# syntax=docker/dockerfile:1
#
# clustermesh image: clustermesh-apiserver, kvstoremesh and the clustermesh CLI.
#
#   docker build -t clustermesh:0.1.0 .
#   docker run --rm clustermesh:0.1.0                                # = kvstoremesh --help
#   docker run --rm clustermesh:0.1.0 kvstoremesh --help
#   docker run --rm clustermesh:0.1.0 clustermesh-apiserver clustermesh --help
#   docker run --rm clustermesh:0.1.0 clustermesh-apiserver etcdinit --help
#   docker run --rm clustermesh:0.1.0 clustermesh --help
#
# There is no dispatching entrypoint: the command is the program, exactly as in the
# Helm chart (command: [kvstoremesh] / [clustermesh-apiserver]). The console scripts
# are on PATH in /opt/clustermesh/bin, so exec-form commands need no shell.
#
# BASE_IMAGE: any image with python3 >= 3.11, pip and venv (official python:*-slim, or
# a Debian with python3-pip and python3-venv). Pin it by digest for reproducible builds.
ARG BASE_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------- build
FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY . .
# The project's wheel plus the wheels of all its dependencies (from PyPI; every one of
# them ships binary wheels, so no compiler is needed).
RUN python3 -m pip wheel --no-cache-dir --wheel-dir /wheels . \
 && ls -l /wheels

# -------------------------------------------------------------------------- runtime
FROM ${BASE_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="clustermesh" \
      org.opencontainers.image.description="Cilium Cluster Mesh control plane in Python: clustermesh-apiserver and KVStoreMesh" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/clustermesh/bin:${PATH}
# Only the wheels get in, through a bind mount (they are not kept in a layer): a venv,
# the project and its dependencies installed offline from them, the venv's own pip and
# setuptools removed again, and every .py file (the interpreter's standard library
# included: slim images delete its .pyc files) compiled now, because the root filesystem
# is read-only at run time.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python3 -m venv /opt/clustermesh \
 && /opt/clustermesh/bin/python -m pip install --no-cache-dir --no-index \
        --find-links=/wheels /wheels/clustermesh-*.whl \
 && /opt/clustermesh/bin/python -m pip uninstall --yes --quiet pip setuptools \
 && python3 -m compileall -q -j 0 \
        "$(python3 -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')" \
        /opt/clustermesh/lib \
 && /opt/clustermesh/bin/python -c 'import kvstoremesh.main, apiserver.main, clustermesh.cli' \
 && rm -rf /root/.cache
# The nonroot uid/gid of distroless images, and what the Helm chart runs as.
USER 65532:65532
WORKDIR /
ENTRYPOINT []
CMD ["kvstoremesh", "--help"]
