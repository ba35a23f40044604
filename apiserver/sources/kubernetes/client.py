"""Where the Kubernetes client's server and credentials come from.

:func:`load_configuration` fills one kubernetes_asyncio
:class:`~kubernetes_asyncio.client.Configuration` (its ApiClient then owns the aiohttp
session and the authentication: bearer token, client certificates, exec plugins and
in-cluster service-account tokens, which it re-reads as they rotate), in this order:

1. ``kubeconfig`` (``--k8s-kubeconfig-path``) if given: it must exist;
2. else the in-cluster service account (``KUBERNETES_SERVICE_HOST``/``_PORT``, the
   ``token`` and ``ca.crt`` of ``service_account_dir``);
3. outside a cluster, ``$KUBECONFIG`` or ``~/.kube/config`` — unless ``api_server`` is
   given, which is then used alone: without credentials, unless the service account's
   token file exists (then with that token, re-read every :data:`TOKEN_REREAD_SECONDS`
   on the injected clock, and its CA if present), and without falling back to
   ``~/.kube/config``.

``api_server`` (``--k8s-api-server``) replaces the server URL of whichever of those was
loaded, keeping its credentials.  A URL without a scheme gets ``https://`` when a CA is
configured, else ``http://`` (client-go's ``DefaultServerURL``).  Credentials from exec
or auth-provider plugins are refreshed every minute by the refresher returned beside the
configuration, which the source runs as a task.  Cilium's own ``createConfig`` differs
in two corners: it ignores ``--k8s-api-server`` when a kubeconfig is given, and with no
kubeconfig it takes an ``https://`` URL only together with the complete in-cluster
config.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from kubernetes_asyncio.client import Configuration
from kubernetes_asyncio.config import ConfigException, load_incluster_config
from kubernetes_asyncio.config.kube_config import load_kube_config, refresh_token

from clustermesh.clock import Clock

log = logging.getLogger(__package__)

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
#: How often a service-account token used without the in-cluster loader is re-read (the
#: loader's own period): kubelet rotates projected tokens well before they expire.
TOKEN_REREAD_SECONDS = 60.0

#: Keeps plugin credentials fresh until cancelled.
Refresher = Callable[[], Awaitable[None]]


async def load_configuration(*, kubeconfig: Path | None, context: str | None,
                             api_server: str | None, service_account_dir: Path,
                             clock: Clock) -> tuple[Configuration, Refresher | None]:
    """The client configuration, and what keeps plugin credentials fresh (if anything)."""
    configuration = Configuration()
    refresher: Refresher | None = None
    if kubeconfig is not None:
        path = str(kubeconfig)
        if not _kubeconfig_exists(path):
            raise ConfigException(f"kubeconfig {path} does not exist")
        refresher = await _load_kubeconfig(path, configuration, context=context)
        origin = f"kubeconfig {path}"
    else:
        token_file = service_account_dir / "token"
        try:
            load_incluster_config(client_configuration=configuration,
                                  token_filename=str(token_file),
                                  cert_filename=str(service_account_dir / "ca.crt"))
            origin = "the in-cluster service account"
        except ConfigException as exc:
            if api_server is not None:
                log.info("kubernetes: not in a cluster (%s); using --k8s-api-server %s "
                         "alone", exc, api_server)
                if _use_token_file(configuration, service_account_dir, clock=clock):
                    origin = f"--k8s-api-server with the token of {token_file}"
                else:
                    origin = "--k8s-api-server without credentials"
            else:
                path = os.environ.get("KUBECONFIG") or "~/.kube/config"
                log.info("kubernetes: not in a cluster (%s); using kubeconfig %s", exc, path)
                if not _kubeconfig_exists(path):
                    raise ConfigException(
                        f"not running in a cluster ({exc}) and no kubeconfig at {path}"
                    ) from None
                refresher = await _load_kubeconfig(path, configuration, context=context)
                origin = f"kubeconfig {path}"
    if api_server is not None:
        tls = bool(configuration.ssl_ca_cert or configuration.cert_file)
        configuration.host = _server_url(api_server, tls=tls)
    log.info("kubernetes: using %s (%s)", origin, configuration.host)
    return configuration, refresher


async def _load_kubeconfig(path: str, configuration: Configuration, *,
                           context: str | None) -> Refresher | None:
    """Load ``path`` into ``configuration``; what refreshes plugin credentials, if any."""
    loader = await load_kube_config(config_file=path, context=context,
                                    client_configuration=configuration,
                                    persist_config=False)
    user = getattr(loader, "_user", None)
    if loader.provider == "gcp" or (user is not None and "exec" in user):
        return lambda: refresh_token(loader, configuration)
    return None


def _server_url(url: str, *, tls: bool) -> str:
    """``url`` with a scheme (https if TLS is configured, as client-go defaults), no
    trailing slash."""
    if "://" not in url:
        url = ("https://" if tls else "http://") + url
    return url.rstrip("/")


def _use_token_file(configuration: Configuration, directory: Path, *, clock: Clock) -> bool:
    """Authenticate with the service-account token in ``directory`` (trusting its
    ``ca.crt`` if present), re-read every :data:`TOKEN_REREAD_SECONDS` as it rotates.
    False if there is no token file."""
    token_file = directory / "token"
    if not token_file.is_file():
        return False
    ca_file = directory / "ca.crt"
    if ca_file.is_file():
        configuration.ssl_ca_cert = str(ca_file)
    read_at = -math.inf

    def refresh(conf: Configuration) -> None:  # called before each request's auth
        nonlocal read_at
        if clock.monotonic() - read_at >= TOKEN_REREAD_SECONDS:
            conf.api_key["BearerToken"] = "Bearer " + token_file.read_text().strip()
            read_at = clock.monotonic()

    refresh(configuration)
    configuration.refresh_api_key_hook = refresh
    return True


def _kubeconfig_exists(path: str) -> bool:
    """Whether any file of a kubeconfig path list (``$KUBECONFIG`` syntax) exists."""
    return any(os.path.exists(os.path.expanduser(p)) for p in path.split(os.pathsep) if p)
