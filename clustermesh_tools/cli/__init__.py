"""``clustermesh``: set up and inspect a Cluster Mesh.

    clustermesh local up|status|check|troubleshoot|restart|stop|down|dashboard|rotate-certs
        [--dir DIR]
    clustermesh enable --cluster-name NAME --cluster-id ID --output DIR [--auth-mode MODE] [...]
    clustermesh connect --source DIR --destination DIR [--auth-mode MODE]
    clustermesh disconnect --source DIR --destination DIR
    clustermesh status [--cluster-dir DIR ... | --kvstoremesh-api [NAME=]HOST:PORT ...]
    clustermesh check --cluster-dir DIR --cluster-dir DIR ...
    clustermesh troubleshoot --cluster-dir DIR ...
    clustermesh dashboard [--cluster-dir DIR ... | --kvstoremesh-api [NAME=]HOST:PORT ...]
    clustermesh rotate-certs --cluster-dir DIR ... [--component C] [--new-ca PHASE]

Exit status: 0 success, 1 a check/status/troubleshoot found a problem (or the
command failed), 2 usage errors.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from clustermesh.clusterconfig import DEFAULT_MAX_CONNECTED_CLUSTERS
from clustermesh.flags import duration_arg
from clustermesh_tools.clusters.authmode import AUTH_MODES, DEFAULT_AUTH_MODE

if TYPE_CHECKING:
    from clustermesh_tools.clusters.targets import Target

__all__ = ["main"]


def _bool_arg(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _names_arg(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected a comma-separated list of cluster names")
    return names


def build_parser() -> argparse.ArgumentParser:
    from clustermesh_tools.localmesh.mesh import default_dir

    p = argparse.ArgumentParser(
        prog="clustermesh",
        description="Set up and inspect a Cilium Cluster Mesh (clustermesh-apiserver + "
                    "KVStoreMesh).  Start with `clustermesh local up`: a 3-cluster mesh on "
                    "this machine.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # ---- local
    local = sub.add_parser("local", help="a mesh of local clusters (etcd + apiserver + "
                                         "KVStoreMesh each) on loopback",
                           description="Run a whole Cluster Mesh on this machine.")
    lsub = local.add_subparsers(dest="local_command", required=True, metavar="SUBCOMMAND")
    dir_help = f"state directory of the mesh (default {default_dir()})"

    def with_dir(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument("--dir", type=Path, default=None, help=dir_help)
        return parser

    up = with_dir(lsub.add_parser("up", help="create and start the mesh, wait until ready"))
    up.add_argument("--clusters", type=int, default=3, metavar="N",
                    help="number of clusters, named cluster1..clusterN (default 3)")
    up.add_argument("--names", type=_names_arg, default=None, metavar="A,B,C",
                    help="cluster names instead (IDs 1, 2, ... in this order)")
    up.add_argument("--max-connected-clusters", type=int, default=255, choices=(255, 511))
    up.add_argument("--kvstoremesh", action=argparse.BooleanOptionalAction, default=True,
                    help="start a KVStoreMesh per cluster (default: yes)")
    up.add_argument("--timeout", type=duration_arg, default=120.0, metavar="DURATION",
                    help="give up waiting for readiness after this (default 2m)")
    up.add_argument("--etcd-members", type=int, default=1, metavar="N",
                    help="etcd members per cluster: 1, 3 or 5 (default 1)")
    up.add_argument("--kvstoremesh-replicas", type=int, default=1, metavar="N",
                    help="KVStoreMesh replicas per cluster, one leading (default 1)")
    up.add_argument("--auth-mode", choices=AUTH_MODES, default=DEFAULT_AUTH_MODE,
                    help="Cilium's tls.authMode for every cluster (default "
                         f"{DEFAULT_AUTH_MODE}); migration and cluster run each apiserver "
                         "with --cluster-users-enabled, cluster makes each KVStoreMesh "
                         "authenticate as remote-<its cluster>")
    st = with_dir(lsub.add_parser("status", help="processes and KVStoreMesh status"))
    st.add_argument("--wait", action="store_true", help="wait until everything is ready")
    st.add_argument("--timeout", type=duration_arg, default=120.0, metavar="DURATION")
    st.add_argument("-o", "--output", choices=("text", "json"), default="text")
    ck = with_dir(lsub.add_parser("check", help="the connectivity test on the local mesh"))
    ck.add_argument("--timeout", type=duration_arg, default=30.0, metavar="DURATION",
                    help="per phase (publish, removal; default 30s)")
    with_dir(lsub.add_parser("troubleshoot", help="run the troubleshooting list"))
    rs = with_dir(lsub.add_parser("restart", help="start again every stopped process "
                                                 "(same ports and data)"))
    rs.add_argument("--cluster", help="only this cluster")
    rs.add_argument("--timeout", type=duration_arg, default=60.0, metavar="DURATION")
    sp = with_dir(lsub.add_parser("stop", help="stop one process (fault injection)"))
    sp.add_argument("--cluster", required=True)
    sp.add_argument("--component", required=True, metavar="COMPONENT",
                    help="etcd, apiserver or kvstoremesh; etcd-N / kvstoremesh-N for the "
                         "other members and replicas (N from 1)")
    sp.add_argument("--kill", action="store_true", help="SIGKILL instead of SIGTERM")
    dn = with_dir(lsub.add_parser("down", help="stop every process of the mesh, remove the "
                                              "state directory"))
    dn.add_argument("--keep", action="store_true",
                    help="keep the state directory (logs, certificates, data)")
    _dashboard_flags(with_dir(lsub.add_parser(
        "dashboard", help="serve a live view of the local mesh in the browser")))
    lrc = _rotate_flags(with_dir(lsub.add_parser(
        "rotate-certs", help="rotate every cluster's certificates (or roll the CA over), "
                             "restart the etcds that must re-read their CA, one cluster at "
                             "a time, and wait until the daemons use the new files")))
    lrc.add_argument("--timeout", type=duration_arg, default=120.0, metavar="DURATION")

    # ---- enable
    en = sub.add_parser("enable", help="generate a cluster's CA/certificates, Helm values and "
                                       "Secrets (files only)")
    en.add_argument("--cluster-name", required=True)
    en.add_argument("--cluster-id", type=int, required=True)
    en.add_argument("--max-connected-clusters", type=int,
                    default=DEFAULT_MAX_CONNECTED_CLUSTERS)
    en.add_argument("--service-type", default="NodePort",
                    choices=("LoadBalancer", "NodePort", "ClusterIP"),
                    help="how other clusters reach this cluster's etcd (default NodePort)")
    ca = en.add_mutually_exclusive_group()
    ca.add_argument("--ca-dir", type=Path, metavar="DIR",
                    help="the mesh CA in DIR (ca.crt, ca.key): created if absent, reused "
                         "otherwise — pass the same DIR for every cluster")
    ca.add_argument("--shared-ca", type=Path, metavar="FILE",
                    help="an existing CA certificate; its key next to it (.key) or "
                         "--shared-ca-key")
    en.add_argument("--shared-ca-key", type=Path, metavar="FILE")
    en.add_argument("--enable-kvstoremesh", type=_bool_arg, default=True, metavar="true|false")
    en.add_argument("--address", default="",
                    help="DNS name or IP other clusters reach this cluster's etcd at "
                         "(default <name>.mesh.cilium.io)")
    en.add_argument("--port", type=int, default=None,
                    help="its port (default 32379 for NodePort, else 2379)")
    en.add_argument("--auth-mode", choices=AUTH_MODES, default=DEFAULT_AUTH_MODE,
                    help="Cilium's tls.authMode (default %(default)s): the CN this "
                         "cluster's remote certificate carries (remote; remote-<name> in "
                         "cluster mode) and whether its etcd gets one remote-<peer> user per "
                         "connected cluster (users.yaml; not in legacy)")
    en.add_argument("--output", type=Path, required=True, metavar="DIR",
                    help="the cluster directory to create")

    # ---- connect
    co = sub.add_parser("connect", help="connect two clusters (both directions)")
    co.add_argument("--source", type=Path, required=True, metavar="DIR")
    co.add_argument("--destination", type=Path, required=True, metavar="DIR")
    co.add_argument("--auth-mode", choices=AUTH_MODES, default=None,
                    help="move both clusters to this tls.authMode first (re-issuing their "
                         "remote certificates if the CN changes); default: each keeps its "
                         "own.  Migrate a mesh to cluster mode via migration")
    dc = sub.add_parser("disconnect", help="disconnect two clusters (both directions)")
    dc.add_argument("--source", type=Path, required=True, metavar="DIR")
    dc.add_argument("--destination", type=Path, required=True, metavar="DIR")

    # ---- status / check / troubleshoot on cluster directories
    ss = sub.add_parser("status", help="per cluster: remotes configured, connected, ready")
    ss.add_argument("--cluster-dir", type=Path, action="append", default=[], metavar="DIR")
    ss.add_argument("--kvstoremesh-api", action="append", default=[],
                    metavar="[NAME=]HOST:PORT", help="a KVStoreMesh status API; repeatable")
    ss.add_argument("--wait", action="store_true")
    ss.add_argument("--timeout", type=duration_arg, default=120.0, metavar="DURATION")
    ss.add_argument("-o", "--output", choices=("text", "json"), default="text")
    cc = sub.add_parser("check", help="connectivity test between cluster directories")
    cc.add_argument("--cluster-dir", type=Path, action="append", default=[], metavar="DIR",
                    required=True)
    cc.add_argument("--timeout", type=duration_arg, default=30.0, metavar="DURATION")
    ts = sub.add_parser("troubleshoot", help="run the troubleshooting list")
    ts.add_argument("--cluster-dir", type=Path, action="append", default=[], metavar="DIR",
                    required=True)
    db = sub.add_parser("dashboard", help="serve a live view of the mesh in the browser")
    db.add_argument("--cluster-dir", type=Path, action="append", default=[], metavar="DIR")
    db.add_argument("--kvstoremesh-api", action="append", default=[],
                    metavar="[NAME=]HOST:PORT", help="a KVStoreMesh status API; repeatable")
    _dashboard_flags(db)
    rc = _rotate_flags(sub.add_parser(
        "rotate-certs", help="issue new certificates from the mesh CA, or roll the CA over "
                             "in phases"))
    rc.add_argument("--cluster-dir", type=Path, action="append", default=[], metavar="DIR",
                    required=True, help="repeatable: the clusters to rotate (a CA rollover: "
                                        "every cluster of the mesh)")
    return p


def _rotate_flags(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from clustermesh_tools.clusters.clusterdir import LEAVES
    from clustermesh_tools.clusters.rotation import PHASES

    parser.add_argument("--component", choices=(*LEAVES, "all"), default="all",
                        help="which leaf certificate to issue again (default all): server "
                             "(etcd's), admin (the daemons'), local (the agents'), remote "
                             "(what KVStoreMesh presents to the other clusters)")
    parser.add_argument("--new-ca", choices=PHASES, default=None, metavar="PHASE",
                        help="a CA rollover phase, in this order on every cluster of the "
                             "mesh: begin (a new CA, trust both), reissue (every leaf from "
                             "the new CA), finish (trust only the new CA)")
    return parser


def _dashboard_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", default="127.0.0.1:0", metavar="HOST:PORT",
                        help="where to serve the page (default 127.0.0.1:0: loopback, a "
                             "free port; the URL is printed). Anything but loopback serves "
                             "the mesh's status without authentication")
    parser.add_argument("--refresh", type=duration_arg, default=2.0, metavar="DURATION",
                        help="collect every DURATION (default 2s)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from clustermesh.etcdbin import EtcdNotFound
    from clustermesh_tools.clusters.clusterdir import ClusterDirError
    from clustermesh_tools.localmesh.mesh import LocalMeshError

    try:
        if args.command == "local":
            from . import localcmd

            return localcmd.run(args)
        return globals()[f"_cmd_{args.command.replace('-', '_')}"](args)
    except (LocalMeshError, ClusterDirError, EtcdNotFound, ValueError) as exc:
        print(f"clustermesh {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"clustermesh {args.command}: interrupted", file=sys.stderr)
        return 130


def _cmd_enable(args: argparse.Namespace) -> int:
    from clustermesh_tools.clusters.clusterdir import enable

    if args.shared_ca_key is not None and args.shared_ca is None:
        raise ValueError("--shared-ca-key needs --shared-ca")
    d = enable(args.output, name=args.cluster_name, cluster_id=args.cluster_id,
               max_connected_clusters=args.max_connected_clusters,
               service_type=args.service_type, kvstoremesh=args.enable_kvstoremesh,
               ca_dir=args.ca_dir, shared_ca=args.shared_ca, shared_ca_key=args.shared_ca_key,
               address=args.address, port=args.port, auth_mode=args.auth_mode)
    users = ""
    if d.auth_mode != "legacy":
        listed = ", ".join(u["name"] for u in d.remote_users()) or "none yet"
        users = f"  users.yaml    its etcd users ({listed}; connect adds remote-<peer>)\n"
    print(f"cluster {d.name} (id {d.id}, authMode {d.auth_mode}) enabled in {d.path}:\n"
          f"  certs/        CA, etcd server cert, admin-{d.name}, local-{d.name} and "
          f"{d.remote_cn} client certs\n"
          "  values.yaml   Helm values for helm/clustermesh\n"
          f"{users}"
          "  secrets.yaml  the TLS Secrets (kubectl apply -f secrets.yaml)\n"
          "  clustermesh/  KVStoreMesh's remote cluster config directory\n"
          f"other clusters reach its etcd at {d.endpoint}; next: clustermesh connect "
          f"--source {d.path} --destination <other cluster dir>")
    return 0


def _cmd_connect(args: argparse.Namespace) -> int:
    from clustermesh_tools.clusters.clusterdir import ClusterDir
    from clustermesh_tools.clusters.pairing import connect

    a, b = ClusterDir.load(args.source), ClusterDir.load(args.destination)
    connect(a, b, auth_mode=args.auth_mode)
    print(f"connected {a.name} <-> {b.name}: {a.config_dir / b.name} and "
          f"{b.config_dir / a.name} written, values.yaml, users.yaml and secrets.yaml of "
          f"both updated ({a.name}: authMode {a.auth_mode}, authenticates as {a.remote_cn}; "
          f"{b.name}: authMode {b.auth_mode}, as {b.remote_cn})")
    return 0


def _cmd_disconnect(args: argparse.Namespace) -> int:
    from clustermesh_tools.clusters.clusterdir import ClusterDir
    from clustermesh_tools.clusters.pairing import disconnect

    a, b = ClusterDir.load(args.source), ClusterDir.load(args.destination)
    if not disconnect(a, b):
        print(f"{a.name} and {b.name} are not connected: nothing to do")
        return 0
    print(f"disconnected {a.name} <-> {b.name}: {a.config_dir / b.name} and "
          f"{b.config_dir / a.name} removed, values.yaml, users.yaml and secrets.yaml of "
          "both updated")
    return 0


def _targets_from_args(args: argparse.Namespace) -> list[Target]:
    from clustermesh_tools.clusters.clusterdir import ClusterDir
    from clustermesh_tools.clusters.targets import Target, targets_from_dirs

    targets = targets_from_dirs([ClusterDir.load(p) for p in args.cluster_dir])
    for spec in args.kvstoremesh_api:
        name, _, addr = spec.rpartition("=")
        targets.append(Target(name=name or addr, api=addr))
    if not targets:
        raise ValueError("nothing to ask: pass --cluster-dir DIR or --kvstoremesh-api "
                         "HOST:PORT (or use `clustermesh local status` for the local mesh)")
    return targets


def _cmd_status(args: argparse.Namespace) -> int:
    from .status import collect, print_statuses, wait

    targets = _targets_from_args(args)
    statuses = wait(targets, timeout=args.timeout) if args.wait else collect(targets)
    return print_statuses(statuses, args.output)


def _cmd_dashboard(args: argparse.Namespace) -> int:
    from .dashboard import run_dashboard

    targets = _targets_from_args(args)
    return run_dashboard(lambda: targets, args)


def _cmd_rotate_certs(args: argparse.Namespace) -> int:
    from clustermesh_tools.clusters.clusterdir import ClusterDir
    from clustermesh_tools.clusters.rotation import rotate_certs

    from .rotate import components, print_rotation

    dirs = [ClusterDir.load(p) for p in args.cluster_dir]
    print_rotation(rotate_certs(dirs, components=components(args), new_ca=args.new_ca),
                   dirs)
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from clustermesh_tools.clusters.clusterdir import ClusterDir

    from .check import CheckTarget, check_and_print

    return check_and_print([CheckTarget.from_dir(ClusterDir.load(p)) for p in args.cluster_dir],
                           timeout=args.timeout)


def _cmd_troubleshoot(args: argparse.Namespace) -> int:
    from clustermesh_tools.clusters.clusterdir import ClusterDir

    from .troubleshoot import troubleshoot

    report = troubleshoot([ClusterDir.load(p) for p in args.cluster_dir])
    sys.stdout.write(report.format())
    return 0 if report.failures == 0 else 1
