#!/usr/bin/env python3
"""The Kubernetes stand-in of bench/apiserver_publish.py, served as its own process.

    python bench/kube_standin.py --endpoints N --kubeconfig PATH [--namespaces 50]

Benchmarks import nothing from ``tests/`` in their own process, so this launcher is the
one place that does: it puts ``tests/harness`` on ``sys.path``, imports the test suite's
``fake_kube`` module (the aiohttp stand-in the apiserver's Kubernetes source is tested
against; the harness package's ``__init__`` is not imported), fills it with
``--namespaces`` Namespaces and ``--endpoints`` CiliumEndpoints (one IPv4 address each,
``10.<i>>16 + 1>.<i>>8>.<i>`` so no two collide, spread over the namespaces, with an
owner Pod, identity, node, service account and one named port: the shape of a real CEP),
starts it on a loopback port and writes a kubeconfig for it.  The other kinds the
apiserver lists (Services, EndpointSlices, CiliumIdentities, CiliumNodes) are served
empty; ServiceExports are not installed (no MCS-API), as in a cluster without those CRDs.

It prints one JSON line on stdout once it serves (``url``, ``endpoints``,
``resource_version``, ``build_s``), then serves until SIGTERM/SIGINT or until its stdin
reaches EOF (the benchmark that started it is gone).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "harness"))

import fake_kube as fk  # noqa: E402  (tests/harness/fake_kube.py)

CREATED = "2026-01-01T00:00:00Z"


def namespace_name(n: int) -> str:
    return f"bench-ns-{n:02d}"


def endpoint_object(i: int, namespaces: int) -> dict[str, Any]:
    """CiliumEndpoint number ``i`` (cilium.io/v2)."""
    ns = namespace_name(i % namespaces)
    ip = f"10.{(i >> 16) + 1}.{i >> 8 & 255}.{i & 255}"
    uid = f"{i:08x}-1c2d-4e5f-8a9b-0c1d2e3f4a5b"
    return {
        "apiVersion": "cilium.io/v2", "kind": "CiliumEndpoint",
        "metadata": {
            "name": f"app-{i % 997}-7d9f8c6b5-{i:06x}", "namespace": ns,
            "uid": f"{i:08x}-0000-4000-8000-000000000000", "creationTimestamp": CREATED,
            "labels": {"app": f"app-{i % 997}"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Pod",
                                 "name": f"app-{i % 997}-7d9f8c6b5-{i:06x}", "uid": uid}],
        },
        "status": {
            "id": 1000 + i % 4000,
            "identity": {"id": 65536 + 256 + i % 60000,
                         "labels": [f"k8s:app=app-{i % 997}",
                                    f"k8s:io.kubernetes.pod.namespace={ns}"]},
            "networking": {"addressing": [{"ipv4": ip}],
                           "node": f"172.18.{i // 250 % 250}.{i % 250 + 1}"},
            "encryption": {"key": 0},
            "service-account": "default",
            "named-ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "state": "ready",
        },
    }


def build(endpoints: int, namespaces: int) -> fk.FakeKube:
    kube = fk.FakeKube()
    for n in range(namespaces):
        kube.create(fk.NAMESPACES, {"metadata": {"name": namespace_name(n),
                                                 "creationTimestamp": CREATED}})
    for i in range(endpoints):
        kube.create(fk.CILIUM_ENDPOINTS, endpoint_object(i, namespaces))
    return kube


async def serve(args: argparse.Namespace) -> None:
    t0 = time.monotonic()
    kube = build(args.endpoints, args.namespaces)
    build_s = time.monotonic() - t0
    await kube.start()
    kube.write_kubeconfig(args.kubeconfig)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def on_stdin() -> None:
        if not sys.stdin.buffer.read1(4096):
            stop.set()

    loop.add_reader(sys.stdin.fileno(), on_stdin)
    print(json.dumps({"url": kube.url, "endpoints": args.endpoints,
                      "namespaces": args.namespaces,
                      "resource_version": kube.resource_version,
                      "build_s": round(build_s, 2)}), flush=True)
    await stop.wait()
    loop.remove_reader(sys.stdin.fileno())
    await kube.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--endpoints", type=int, required=True)
    p.add_argument("--namespaces", type=int, default=50)
    p.add_argument("--kubeconfig", type=Path, required=True)
    asyncio.run(serve(p.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
