#!/usr/bin/env python3
"""The reference of bench/apiserver_publish.py: a bare lister + writer, run as a fresh process.

    python bench/bare_publisher.py --kubeconfig PATH --etcd URL --cluster NAME \\
        [--page-size 500] [--txn-ops 128] [--inflight 4]

It does what an apiserver's initial publish of the ipcache cannot do without — and
nothing else: a paginated list (``limit``/``continue``, no ``resourceVersion``) of
``/apis/cilium.io/v2/ciliumendpoints`` through the same Kubernetes client library and
call the apiserver's reflector makes (kubernetes_asyncio's ``ApiClient.call_api`` with a
kubeconfig-loaded ``Configuration``, the raw body decoded with ``json.loads``); every
object converted by the apiserver's own converter,
:func:`apiserver.converters.endpoint_entries`, so the keys and bytes are identical;
128-op Txns with 4 in flight into the etcd over the same grpc.aio client
(:class:`clustermesh.etcd.client.EtcdClient`); then the ipcache sync canary
(``cilium/synced/<cluster>/cilium/state/ip/v1``), once every Txn is committed.

Writes start as soon as the first page is converted (the apiserver, by design, waits for
the complete list of every kind before it writes).  No client-side rate limit, no
Namespace list (every CEP's namespace is global here), no ownership or dedup against
etcd, no watch, no health or metrics servers.  It prints one JSON line: keys written,
pages listed and seconds from its first request to its canary.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
from kubernetes_asyncio.client import ApiClient, Configuration
from kubernetes_asyncio.config.kube_config import load_kube_config

from apiserver.converters import endpoint_entries
from bench._txnpipe import TxnPipe
from clustermesh.etcd.client import EtcdClient
from clustermesh.etcd.config import parse_etcd_config
from clustermesh.keys import ENDPOINTS

PATH = "/apis/cilium.io/v2/ciliumendpoints"


async def list_pages(client: ApiClient, page_size: int) -> Any:
    """Yield the ``items`` of each page of the CiliumEndpoint list."""
    cont: str | None = None
    timeout = aiohttp.ClientTimeout(total=60.0)
    while True:
        query: list[tuple[str, Any]] = [("limit", page_size)]
        if cont:
            query.append(("continue", cont))
        resp = await client.call_api(PATH, "GET", query_params=query,
                                     header_params={"Accept": "application/json"},
                                     auth_settings=["BearerToken"], _preload_content=False,
                                     _request_timeout=timeout)
        try:
            if resp.status != 200:
                raise RuntimeError(f"list failed: HTTP {resp.status}: {await resp.text()}")
            data = json.loads(await resp.read())
        finally:
            resp.release()
        yield data.get("items") or []
        cont = (data.get("metadata") or {}).get("continue") or None
        if cont is None:
            return


async def publish(args: argparse.Namespace) -> dict[str, object]:
    t0 = time.monotonic()
    configuration = Configuration()
    await load_kube_config(config_file=str(args.kubeconfig), client_configuration=configuration,
                           persist_config=False)
    etcd = EtcdClient(parse_etcd_config(f"endpoints:\n- {args.etcd}\n"), name=args.etcd,
                      request_timeout=120.0)
    await etcd.connect()
    pipe = TxnPipe(etcd, txn_ops=args.txn_ops, inflight=args.inflight)
    written = pages = 0
    async with ApiClient(configuration) as client:
        async for items in list_pages(client, args.page_size):
            pages += 1
            for cep in items:
                for key, value in endpoint_entries(cep).items():
                    written += 1
                    if pipe.add(key.encode(), value):
                        await pipe.send()
    await pipe.close()
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    await etcd.put(ENDPOINTS.state_canary(args.cluster).encode(), stamp.encode())
    seconds = time.monotonic() - t0
    await etcd.close()
    return {"keys": written, "pages": pages, "seconds": round(seconds, 3)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kubeconfig", type=Path, required=True)
    p.add_argument("--etcd", required=True, help="the local etcd's client URL")
    p.add_argument("--cluster", required=True, help="cluster name (of the sync canary)")
    p.add_argument("--page-size", type=int, default=500, help="the apiserver's: 500")
    p.add_argument("--txn-ops", type=int, default=128)
    p.add_argument("--inflight", type=int, default=4)
    args = p.parse_args()
    print(json.dumps(asyncio.run(publish(args))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
