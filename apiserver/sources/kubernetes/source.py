"""The Kubernetes source: one client, one rate limiter, one reflector per kind.

:meth:`KubernetesSource.run` loads the client configuration
(:func:`~apiserver.sources.kubernetes.client.load_configuration`), opens one
:class:`~kubernetes_asyncio.client.ApiClient` (one aiohttp session, one connection
pool), and runs in one :class:`asyncio.TaskGroup` a
:class:`~apiserver.sources.kubernetes.reflector.Reflector` per kind, all sharing the
source's :class:`~apiserver.sources.kubernetes.ratelimit.TokenBucket`, plus the plugin
credential refresher if the configuration has one.  Reflectors fail and retry on their
own; only a configuration that cannot be loaded makes :meth:`~KubernetesSource.run`
raise (the daemon restarts the source with a backoff).  Cancelling it cancels every
reflector, closes every open stream and the session, and leaves no task behind.

Everything that waits or measures time (the rate limit, the retry backoff, the recheck
of a missing kind, the token re-read) runs on the one injected
:class:`~clustermesh.clock.Clock`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

from kubernetes_asyncio.client import ApiClient

from apiserver.sources import KINDS_BY_NAME, Kind, ObjectSink
from clustermesh.backoff import KUBERNETES, BackoffPolicy
from clustermesh.clock import REAL_CLOCK, Clock

from .client import SERVICE_ACCOUNT_DIR, load_configuration
from .ratelimit import DEFAULT_CLIENT_BURST, DEFAULT_CLIENT_QPS, TokenBucket
from .reflector import KindStatus, ListWatchSettings, Reflector

log = logging.getLogger(__package__)

USER_AGENT = "clustermesh-apiserver (python; kubernetes_asyncio)"

_NO_SELECTORS: Mapping[str, str] = MappingProxyType({})


class KubernetesSource:
    """Delivers kinds from a kube-apiserver to an :class:`ObjectSink` (see the module
    docstring; ``label_selectors`` maps kind names to ``labelSelector`` strings)."""

    def __init__(self, *, kubeconfig: Path | None = None, context: str | None = None,
                 api_server: str | None = None,
                 label_selectors: Mapping[str, str] = _NO_SELECTORS,
                 client_qps: float = DEFAULT_CLIENT_QPS,
                 client_burst: int = DEFAULT_CLIENT_BURST, clock: Clock = REAL_CLOCK,
                 service_account_dir: Path = SERVICE_ACCOUNT_DIR,
                 page_size: int = 500, watch_timeout_seconds: int = 300,
                 request_timeout: float = 60.0, backoff: BackoffPolicy = KUBERNETES,
                 missing_recheck_interval: float | None = 60.0) -> None:
        self.settings = ListWatchSettings(
            page_size=page_size, watch_timeout_seconds=int(watch_timeout_seconds),
            request_timeout=request_timeout, backoff=backoff,
            missing_recheck_interval=missing_recheck_interval)
        # A misspelt kind would silently go unfiltered.
        if unknown := sorted(set(label_selectors) - set(KINDS_BY_NAME)):
            raise ValueError(f"label selectors for unknown kinds {unknown}; kinds are "
                             f"{sorted(KINDS_BY_NAME)}")
        self.kubeconfig = kubeconfig
        self.context = context
        self.api_server = api_server or None  # "" (an unset flag) means none
        self.label_selectors = {k: v for k, v in label_selectors.items() if v}
        self.rate_limiter = TokenBucket(qps=client_qps, burst=client_burst, clock=clock)
        self.service_account_dir = service_account_dir
        self.clock = clock
        self._status: dict[str, KindStatus] = {}

    def status(self) -> dict[str, KindStatus]:
        """Per kind name: synced, missing, current resourceVersion, last error."""
        return dict(self._status)

    async def run(self, sink: ObjectSink, kinds: Sequence[Kind]) -> None:
        configuration, refresher = await load_configuration(
            kubeconfig=self.kubeconfig, context=self.context, api_server=self.api_server,
            service_account_dir=self.service_account_dir, clock=self.clock)
        async with ApiClient(configuration) as client:
            client.user_agent = USER_AGENT
            async with asyncio.TaskGroup() as tg:
                if refresher is not None:
                    tg.create_task(_log_failure(refresher(), "credential refresh"),
                                   name="kube-credential-refresh")
                for kind in kinds:
                    status = self._status[kind.name] = KindStatus(kind)
                    reflector = Reflector(
                        client=client, sink=sink, kind=kind, status=status,
                        settings=self.settings,
                        label_selector=self.label_selectors.get(kind.name, ""),
                        rate_limiter=self.rate_limiter, clock=self.clock)
                    tg.create_task(reflector.run(), name=f"kube-reflector-{kind.name}")
                await asyncio.Event().wait()  # until cancelled


async def _log_failure(coro: Awaitable[None], what: str) -> None:
    try:
        await coro
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("kubernetes: %s failed; credentials will no longer be refreshed", what)
