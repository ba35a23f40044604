"""A real Prometheus server for tests: scrape a daemon's ``/metrics`` and query it back.

:class:`PrometheusServer` writes a minimal config (one job, static targets, a short
scrape interval), starts the ``prometheus`` binary on a free loopback port with its
TSDB in a test directory, waits for ``/-/ready`` and answers instant queries through
the HTTP API.  :meth:`PrometheusServer.stop` (also the context manager's exit) sends
SIGTERM to its process group and SIGKILLs it if it lingers, so nothing outlives the
test — only while the process is not reaped (:class:`harness.procs.Child`), so a
recycled pid is never signalled.

The binary is ``$PROMETHEUS_BIN`` or ``prometheus`` on ``PATH`` (Debian package
``prometheus``); :func:`find_prometheus_binary` raises :class:`PrometheusNotFound`
otherwise, for the caller to turn into a visible skip.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

from .etcd import LOOPBACK, free_port
from .procs import Child

PROMETHEUS_BIN_ENV = "PROMETHEUS_BIN"


class PrometheusNotFound(Exception):
    """No ``prometheus`` binary: install Debian's ``prometheus`` or set $PROMETHEUS_BIN."""


class PrometheusError(RuntimeError):
    pass


def find_prometheus_binary() -> Path:
    explicit = os.environ.get(PROMETHEUS_BIN_ENV)
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise PrometheusNotFound(f"${PROMETHEUS_BIN_ENV}={explicit} is not executable")
        return Path(explicit)
    found = shutil.which("prometheus")
    if found is None:
        raise PrometheusNotFound(
            "no 'prometheus' binary on PATH (apt-get install prometheus, "
            f"or set ${PROMETHEUS_BIN_ENV})")
    return Path(found)


class PrometheusServer:
    """One Prometheus process scraping ``targets`` (``host:port``) every ``scrape_interval``;
    or, with ``config``, running that configuration as it is (a ``prometheus.yml`` someone
    else wrote, say the local mesh's)."""

    def __init__(self, directory: Path, targets: Sequence[str] = (), *,
                 scrape_interval: str = "1s", job: str = "kvstoremesh",
                 config: dict[str, Any] | None = None,
                 binary: Path | None = None) -> None:
        self.dir = Path(directory)
        self.targets = list(targets)
        self.config = config
        self.scrape_interval = scrape_interval
        self.job = job
        self.binary = binary or find_prometheus_binary()
        self.port = free_port()
        self.config_file = self.dir / "prometheus.yml"
        self.storage = self.dir / "data"
        self.log_file = self.dir / "prometheus.log"
        self._proc: Child | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def _write_config(self) -> None:
        # JSON is YAML: no need for a YAML writer here.
        config = self.config or {
            "global": {"scrape_interval": self.scrape_interval,
                       "scrape_timeout": self.scrape_interval,
                       "evaluation_interval": self.scrape_interval},
            "scrape_configs": [{"job_name": self.job,
                                "static_configs": [{"targets": self.targets}]}],
        }
        self.config_file.write_text(json.dumps(config, indent=2) + "\n")

    def args(self) -> list[str]:
        return [str(self.binary),
                f"--config.file={self.config_file}",
                f"--storage.tsdb.path={self.storage}",
                f"--web.listen-address={LOOPBACK}:{self.port}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn"]

    def start(self, timeout: float = 20.0) -> Self:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        with self.log_file.open("ab") as log:
            self._proc = Child.spawn(self.args(), stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, cwd=self.dir,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise PrometheusError(f"prometheus exited with {self._proc.returncode}:\n"
                                      f"{self.log_tail()}")
            with (contextlib.suppress(OSError),
                  urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as resp):
                if resp.status == 200:
                    return self
            if time.monotonic() > deadline:
                self.stop()
                raise PrometheusError(f"prometheus not ready within {timeout}s:\n"
                                      f"{self.log_tail()}")
            time.sleep(0.1)

    def stop(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or not proc.signal_group(signal.SIGTERM):
            return  # never started, or already reaped: nothing of ours to signal
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.signal_group(signal.SIGKILL)
            proc.wait(timeout=10)

    @property
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _get(self, path: str, params: dict[str, str]) -> Any:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                doc = json.load(resp)
        except urllib.error.HTTPError as exc:
            doc = json.load(exc)
        if doc.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {doc}")
        return doc["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query: ``[{"metric": {labels}, "value": [ts, "value"]}, ...]``."""
        data = self._get("/api/v1/query", {"query": expr})
        return list(data["result"])

    def series(self, selector: str) -> list[dict[str, str]]:
        """The label sets of every series ``selector`` matches."""
        return list(self._get("/api/v1/series", {"match[]": selector}))

    def targets_health(self) -> list[dict[str, Any]]:
        """The active targets with their ``health`` and ``lastError``."""
        return list(self._get("/api/v1/targets", {"state": "active"})["activeTargets"])

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
