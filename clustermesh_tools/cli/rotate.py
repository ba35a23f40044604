"""What ``rotate-certs`` (and ``local rotate-certs``) print: what changed, what to do."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from clustermesh_tools.clusters.clusterdir import LEAVES, NAMESPACE, ClusterDir
from clustermesh_tools.clusters.rotation import Rotation


def components(args: argparse.Namespace) -> tuple[str, ...]:
    """The leaves ``--component`` names; refused with ``--new-ca begin|finish``, which
    issue none."""
    if args.new_ca in ("begin", "finish") and args.component != "all":
        raise ValueError(f"--new-ca {args.new_ca} issues no certificate: --component "
                         "goes without --new-ca or with --new-ca reissue")
    return LEAVES if args.component == "all" else (args.component,)


def print_rotation(result: Rotation, dirs: Sequence[ClusterDir]) -> None:
    for line in result.done:
        print(line)
    print("next, for each cluster:")
    for d in dirs:
        print(f"  kubectl -n {NAMESPACE} apply -f {d.path / 'secrets.yaml'}"
              + ("   # and helm upgrade with its values.yaml (remotes' certificates)"
                 if any(r.own_tls for r in d.remotes) else ""))
    print("  the kubelet updates the mounted Secrets (within a minute or so); the daemons "
          "re-read their TLS files every 10 s and reconnect, etcd reads its server "
          "certificate on each new connection: no restart for that")
    if result.restart_etcd:
        print(f"  etcd reads --trusted-ca-file only at start: restart the etcd of "
              f"{', '.join(result.restart_etcd)}, one cluster at a time (in Kubernetes "
              f"`kubectl -n {NAMESPACE} rollout restart deployment/clustermesh-apiserver`), "
              "and wait for `clustermesh status --wait` before the next")
    if result.next_phase:
        share = (" (for other clusters, give one of these directories along: they then "
                 "share the new CA)" if result.next_phase == "reissue" else "")
        print(f"  once this phase holds on every cluster of the mesh{share}, every etcd "
              f"restarted and `clustermesh status --wait` ready: clustermesh rotate-certs "
              f"--cluster-dir ... --new-ca {result.next_phase}")
    for note in result.notes:
        print(f"note: {note}")
