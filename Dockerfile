# syntax=docker/dockerfile:1
#
# clustermesh image: clustermesh-apiserver (with its kvstoremesh, etcdinit, *-dbg and
# version subcommands), the kvstoremesh and clustermesh commands, and etcd — laid out
# as Cilium's clustermesh-apiserver image, so Cilium's Helm chart runs it unchanged
# (clustermesh.apiserver.image.override=<this image>):
#
#   /usr/bin/clustermesh-apiserver      ENTRYPOINT (a link to the console script)
#   /usr/bin/etcd                       etcd from Debian's etcd-server package (below)
#   /var/lib/cilium/etcd-config.yaml    the local etcd client config (image/etcd-config.yaml)
#   /var/run/cilium                     mode 0777, for the non-root process
#
#   docker build -t clustermesh:0.1.0 .
#   docker run --rm clustermesh:0.1.0 version
#   docker run --rm clustermesh:0.1.0 kvstoremesh --help
#   docker run --rm clustermesh:0.1.0 etcdinit --help
#   docker run --rm --entrypoint clustermesh clustermesh:0.1.0 --help
#   docker run --rm --entrypoint /usr/bin/etcd clustermesh:0.1.0 --version
#
# The console scripts (clustermesh-apiserver, kvstoremesh, clustermesh) are on PATH in
# /opt/clustermesh/bin, so exec-form commands need no shell.
#
# BASE_IMAGE: a Debian (or Debian-based, such as the official python:*-slim) image with
# python3 >= 3.11, pip, venv and apt. Pin it by digest for reproducible builds.
# etcd: the etcd-server package of Debian ETCD_SUITE (trixie: etcd 3.5.16), fetched
# with apt from DEBIAN_MIRROR (and its security suite) and unpacked, not installed; the
# build refuses an etcd older than 3.5.3, so never 3.5.0-3.5.2 (their data-inconsistency
# bug) nor 3.4.
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

# ----------------------------------------------------------------------------- etcd
FROM ${BASE_IMAGE} AS etcd
ARG DEBIAN_MIRROR=http://deb.debian.org/debian
ARG DEBIAN_SECURITY_MIRROR=http://deb.debian.org/debian-security
ARG ETCD_SUITE=trixie
WORKDIR /etcd
# A private apt configuration (its own sources, lists and cache), so the base image's
# apt setup is neither used nor changed; only the one .deb is downloaded.
RUN mkdir -p apt/lists/partial apt/cache/archives/partial apt/sources.list.d \
 && keyring=/usr/share/keyrings/debian-archive-keyring.gpg \
 && printf 'deb [signed-by=%s] %s %s main\n' \
        "$keyring" "$DEBIAN_MIRROR" "$ETCD_SUITE" \
        "$keyring" "$DEBIAN_SECURITY_MIRROR" "$ETCD_SUITE-security" > apt/sources.list \
 && printf '%s\n' \
        'Dir::Etc::SourceList "/etcd/apt/sources.list";' \
        'Dir::Etc::SourceParts "/etcd/apt/sources.list.d";' \
        'Dir::State::Lists "/etcd/apt/lists";' \
        'Dir::Cache "/etcd/apt/cache";' \
        'APT::Sandbox::User "root";' > apt/apt.conf \
 && APT_CONFIG=/etcd/apt/apt.conf apt-get update -qq \
 && APT_CONFIG=/etcd/apt/apt.conf apt-get download -qq etcd-server \
 && dpkg-deb -x etcd-server_*.deb root \
 && root/usr/bin/etcd --version > version.txt \
 && version="$(sed -n 's/^etcd Version: //p' version.txt)" \
 && case "$version" in \
        3.5.[0-2]|3.[0-4].*|[0-2].*|"") \
            echo "etcd '$version' from $ETCD_SUITE refused: 3.5.3 or newer is required" >&2; \
            exit 1 ;; \
    esac \
 && echo "etcd $version ($(basename etcd-server_*.deb))"

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
COPY --from=etcd /etcd/root/usr/bin/etcd /usr/bin/etcd
COPY --from=etcd /etcd/root/usr/share/doc/etcd-server/copyright /usr/share/doc/etcd-server/copyright
COPY --chmod=0444 image/etcd-config.yaml /var/lib/cilium/etcd-config.yaml
# Only the wheels get in, through a bind mount (they are not kept in a layer): a venv,
# the project and its dependencies installed offline from them, the venv's own pip and
# setuptools removed again, and every .py file (the interpreter's standard library
# included: slim images delete its .pyc files) compiled now, because the root filesystem
# is read-only at run time. Then Cilium's paths: the entrypoint and a writable
# /var/run/cilium.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python3 -m venv /opt/clustermesh \
 && /opt/clustermesh/bin/python -m pip install --no-cache-dir --no-index \
        --find-links=/wheels /wheels/clustermesh-*.whl \
 && /opt/clustermesh/bin/python -m pip uninstall --yes --quiet pip setuptools \
 && python3 -m compileall -q -j 0 \
        "$(python3 -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')" \
        /opt/clustermesh/lib \
 && /opt/clustermesh/bin/python -c 'import kvstoremesh.main, apiserver.main, clustermesh_tools.apiserver_binary, clustermesh_tools.cli' \
 && ln -s /opt/clustermesh/bin/clustermesh-apiserver /usr/bin/clustermesh-apiserver \
 && install -d -m 0777 /var/run/cilium \
 && /usr/bin/etcd --version \
 && rm -rf /root/.cache
# The nonroot uid/gid of distroless images (Cilium's base), and what both charts run as.
USER 65532:65532
WORKDIR /
ENTRYPOINT ["/usr/bin/clustermesh-apiserver"]
