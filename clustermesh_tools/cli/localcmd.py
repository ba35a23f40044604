"""``clustermesh local ...``: the local mesh subcommands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from clustermesh_tools.clusters.clusterdir import ClusterDir
from clustermesh_tools.clusters.targets import Target
from clustermesh_tools.localmesh import procs
from clustermesh_tools.localmesh.mesh import LocalMesh, LocalMeshError, default_dir


def _mesh(args: argparse.Namespace) -> LocalMesh:
    return LocalMesh.load(args.dir or default_dir())


def _dir_flag(mesh: LocalMesh) -> str:
    return "" if mesh.dir == default_dir().absolute() else f" --dir {mesh.dir}"


def run(args: argparse.Namespace) -> int:
    """Run ``clustermesh local <args.local_command>``; the exit status."""
    return globals()[f"_{args.local_command.replace('-', '_')}"](args)


def _up(args: argparse.Namespace) -> int:
    names = args.names or [f"cluster{i}" for i in range(1, args.clusters + 1)]
    if args.names is None and args.clusters < 1:
        raise LocalMeshError("--clusters must be at least 1")
    mesh = LocalMesh(args.dir or default_dir())
    mesh.up(names=names, max_connected_clusters=args.max_connected_clusters,
            kvstoremesh=args.kvstoremesh, auth_mode=args.auth_mode, timeout=args.timeout,
            etcd_members=args.etcd_members, kvstoremesh_replicas=args.kvstoremesh_replicas,
            say=lambda s: print(s, flush=True))
    flag = _dir_flag(mesh)
    print(f"\nthe mesh runs in the background (logs: {mesh.dir}/<cluster>/logs/).\n"
          f"  clustermesh local status{flag}\n"
          f"  clustermesh local check{flag}\n"
          f"  clustermesh local troubleshoot{flag}\n"
          f"  clustermesh local down{flag}      # stop it and remove {mesh.dir}")
    return 0


def process_notes(mesh: LocalMesh) -> Callable[[ClusterDir, str], str | None]:
    """For troubleshoot/status: explain a recorded process that is not running."""
    def note(d: ClusterDir, component: str) -> str | None:
        rec = mesh.processes.get(f"{d.name}/{component}")
        if rec is None or procs.is_running(rec):
            return None
        return (f"{d.name}/{component} (pid {rec.pid}) is not running; its log is {rec.log}; "
                f"start it again with `clustermesh local restart{_dir_flag(mesh)} "
                f"--cluster {d.name}`")
    return note


def mesh_targets(mesh: LocalMesh) -> list[Target]:
    """One target per cluster of ``mesh``, with notes on its processes that are not
    running and the metrics URL of each (for ``local status`` and ``local dashboard``)."""
    out = []
    for c in mesh.clusters:
        notes = [f"{key.split('/')[1]} process NOT RUNNING (pid {rec.pid})"
                 for key, rec in mesh.processes.items()
                 if key.startswith(f"{c.name}/") and not procs.is_running(rec)]
        d = c.cluster_dir
        out.append(Target(name=c.name, api=c.kvstoremesh_api, cluster_id=c.id,
                          configured=[r.name for r in d.remotes], notes=notes,
                          metrics=c.metrics or None))
    return out


def _status(args: argparse.Namespace) -> int:
    from .status import collect, print_statuses, wait

    mesh = _mesh(args)
    if not mesh.kvstoremesh:
        running = mesh.running()
        for key, ok in running.items():
            print(f"{key}: {'running' if ok else 'NOT RUNNING'}")
        print("this mesh runs without KVStoreMesh (local up --no-kvstoremesh): there is no "
              "KVStoreMesh status to show; agents would connect to each etcd directly")
        _print_prometheus(mesh)
        return 0 if all(running.values()) else 1

    def targets() -> list[Target]:
        return mesh_targets(mesh)

    statuses = (wait(targets(), timeout=args.timeout, refresh=targets) if args.wait
                else collect(targets()))
    code = print_statuses(statuses, args.output)
    if args.output != "json":
        _print_prometheus(mesh)
    return code


def _dashboard(args: argparse.Namespace) -> int:
    from .dashboard import run_dashboard

    mesh = _mesh(args)
    if not mesh.kvstoremesh:
        raise LocalMeshError("this mesh runs without KVStoreMesh (local up --no-kvstoremesh): "
                             "the dashboard shows what each KVStoreMesh caches")
    return run_dashboard(lambda: mesh_targets(LocalMesh.load(mesh.dir)), args)


def _print_prometheus(mesh: LocalMesh) -> None:
    """The metrics line of ``local status`` (text): where prometheus.yml is."""
    if mesh.prometheus_file.is_file():
        n = sum(len(c.metrics_ports) for c in mesh.clusters)
        print(f"Metrics: {n} endpoints; Prometheus scrape config {mesh.prometheus_file} "
              f"(prometheus --config.file={mesh.prometheus_file})")


def _check(args: argparse.Namespace) -> int:
    from .check import CheckTarget, check_and_print

    mesh = _mesh(args)
    if not mesh.kvstoremesh:
        raise LocalMeshError("this mesh runs without KVStoreMesh (local up --no-kvstoremesh): "
                             "the check reads each cluster's KVStoreMesh cache; start the mesh "
                             "with --kvstoremesh")
    return check_and_print([CheckTarget.from_dir(c.cluster_dir) for c in mesh.clusters],
                           timeout=args.timeout)


def _troubleshoot(args: argparse.Namespace) -> int:
    from .troubleshoot import troubleshoot

    mesh = _mesh(args)
    report = troubleshoot([c.cluster_dir for c in mesh.clusters],
                          process_notes=process_notes(mesh))
    sys.stdout.write(report.format())
    return 0 if report.failures == 0 else 1


def _restart(args: argparse.Namespace) -> int:
    mesh = _mesh(args)
    if args.cluster:
        mesh.cluster(args.cluster)
    mesh.start_stopped(cluster=args.cluster, timeout=args.timeout,
                       say=lambda s: print(s, flush=True))
    return 0


def _stop(args: argparse.Namespace) -> int:
    mesh = _mesh(args)
    result = mesh.stop_component(args.cluster, args.component, kill=args.kill)
    print(f"{args.cluster}/{args.component}: {result}")
    return 0


def _down(args: argparse.Namespace) -> int:
    mesh = _mesh(args)
    mesh.down(keep=args.keep, say=lambda s: print(s, flush=True))
    return 0


def _rotate_certs(args: argparse.Namespace) -> int:
    from clustermesh_tools.localmesh.certs import rotate_mesh_certs

    from .rotate import components

    mesh = _mesh(args)
    result = rotate_mesh_certs(mesh, components=components(args), new_ca=args.new_ca,
                               timeout=args.timeout, say=lambda s: print(s, flush=True))
    for note in result.notes:
        print(f"note: {note}")
    if result.next_phase:
        print(f"next: clustermesh local rotate-certs{_dir_flag(mesh)} --new-ca "
              f"{result.next_phase}")
    return 0
