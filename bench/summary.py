#!/usr/bin/env python3
"""Print the KVStoreMesh benchmark results as the Markdown table of README.md.

    python bench/summary.py            # bench/results/<name>.json
    python bench/summary.py --quick    # bench/results/<name>-quick.json

Missing result files are skipped.  Two tables: first every figure of issue M ("against
the floor": any figure that carries a ``ratio`` and a ``goal``), with ours and the
reference of the same run as median (min-max) and the ratio; then the older figures,
each with its reference and the target of the issue that set it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def load(name: str, quick: bool) -> dict[str, Any] | None:
    path = RESULTS / f"{name}{'-quick' if quick else ''}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def figures(doc: dict[str, Any] | None, name: str) -> list[dict[str, Any]]:
    return [f for f in (doc or {}).get("figures", []) if f["figure"] == name]


def n(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


# Issue M's figures, in the order: figure name -> its row's label.
FLOOR_LABELS: dict[str, Any] = {
    "floor_initial_sync": lambda f: (
        f"Initial sync, {f['entries']:,} ipcache entries, one remote, spawn → canary"),
    "propagation_latency_p50": lambda f: _latency_label(f, "p50"),
    "propagation_latency_p99": lambda f: _latency_label(f, "p99"),
    "churn_latency_p99": lambda f: "Churn: p99 propagation latency",
    "churn_backlog_peak": lambda f: "Churn: peak sync queue (backlog)",
    "bootstrap_time_to_ready": lambda f: "Bootstrap: spawn → ready",
    "memory_bytes_per_key": lambda f: (
        "Memory: RSS slope, " + " → ".join(f"{k // 1000}k" for k in f["params"]["sizes"])
        + " cached keys"),
    "restart_time_to_ready": lambda f: (
        f"Restart (kill -9), {f['params']['cached_keys']:,} cached keys unchanged: "
        "spawn → ready"),
    "restart_local_writes": lambda f: "Restart: local writes",
    "apiserver_initial_publish": lambda f: "apiserver initial publish, CiliumEndpoints",
    "apiserver_restart_writes": lambda f: "apiserver restart: local writes",
}


def _latency_label(f: dict[str, Any], q: str) -> str:
    p = f.get("params", {})
    return (f"Propagation {q}, {p.get('remotes', '?')} remotes, "
            f"{n(f.get('rate_ops_per_s') or p.get('rate', 0))} updates/s")


def spread(x: dict[str, Any] | None, unit: str = "") -> str:
    """median (min-max) of a runs/reference record."""
    if not x or x.get("median") is None:
        return "-"
    def fmt(v: Any) -> str:
        return n(v) if isinstance(v, int) or (isinstance(v, float) and v >= 100) else f"{v:g}"
    text = fmt(x["median"])
    if x.get("min") is not None and x.get("max") is not None:
        text += f" ({fmt(x['min'])}-{fmt(x['max'])})"
    return f"{text} {unit}".strip()


def floor_rows(quick: bool) -> tuple[list[str], list[list[str]]]:
    """Every figure with a ratio and a goal, from every results file."""
    machines: list[str] = []
    found: list[tuple[int, str, list[str]]] = []
    suffix = "-quick.json" if quick else ".json"
    for path in sorted(RESULTS.glob(f"*{suffix}")):
        if not quick and path.name.endswith("-quick.json"):
            continue
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        for f in doc.get("figures", []):
            if "goal" not in f or "met" not in f:
                continue
            line = _machine_line(doc)
            if line not in machines:
                machines.append(line)
            label = FLOOR_LABELS.get(f["figure"], lambda f: f["figure"])(f)
            ref = f.get("reference") or {}
            unit = f.get("unit", "")
            ratio = f.get("ratio")
            order = list(FLOOR_LABELS).index(f["figure"]) if f["figure"] in FLOOR_LABELS \
                else len(FLOOR_LABELS)
            found.append((order, label, [
                label, spread(f.get("runs") or {"median": f["value"]}, unit),
                f"{ref.get('name', 'reference')}: {spread(ref, unit)}" if ref else "-",
                f"{ratio:.2f}x" if isinstance(ratio, (int, float)) else "-",
                f"{f['goal']}: {verdict(bool(f['met']))}", path.name]))
    found.sort(key=lambda t: (t[0], t[1]))
    return machines, [row for _, _, row in found]


def _machine_line(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    return (f"{m['nproc']} vCPU {m['cpu_model']}, Python {m['python']}, grpcio "
            f"{m.get('grpcio')}, protobuf {m.get('protobuf')}, etcd "
            f"{doc.get('etcd', {}).get('version', '?')}, {doc['date'][:10]}")


def rows(quick: bool) -> tuple[list[str], list[list[str]]]:
    machines: list[str] = []
    out: list[list[str]] = []

    def machine(doc: dict[str, Any] | None) -> None:
        if doc is None:
            return
        m = doc["machine"]
        line = (f"{m['nproc']} vCPU {m['cpu_model']}, Python {m['python']}, etcd "
                f"{doc.get('etcd', {}).get('version', '?')}, {doc['date'][:10]}")
        if line not in machines:
            machines.append(line)

    doc = load("initial_sync", quick)
    machine(doc)
    for f in figures(doc, "initial_sync"):
        p = f["params"]
        out.append([f"Initial sync, {p['objects']['total']:,} objects, max-txn-ops "
                    f"{p['max_txn_ops']}, {p['max_inflight']} in flight",
                    f"{n(f['value'])} keys/s ({f['percent_of_ceiling']} % of ceiling); "
                    f"{f['seconds_to_all_canaries']} s from spawn to all canaries",
                    f"bare BatchWriter ceiling {n(f['reference']['ceiling_keys_per_s'])} keys/s",
                    f"≥ 80 % of ceiling: {verdict(f['percent_of_ceiling'] >= 80)}"])
    for f in figures(doc, "make_mirror"):
        p = f["params"]
        done = "" if p["complete"] else f" (stopped after {p['seconds']} s)"
        out.append([f"`etcdctl make-mirror` of the same {p['objects']['total']:,} objects, "
                    f"{p['processes']} processes",
                    f"{n(f['value'])} keys/s{done}",
                    f"daemon {n(f['reference']['daemon_keys_per_s'])} keys/s = "
                    f"{f['daemon_speedup']}x make-mirror",
                    f"≥ 30x: {verdict((f['daemon_speedup'] or 0) >= 30)}"])

    doc = load("scale", quick)
    machine(doc)
    ready = figures(doc, "scale_time_to_ready")
    if ready:
        f = ready[0]
        p = f["params"]
        queue = figures(doc, "scale_peak_sync_queue")[0]
        errors = figures(doc, "scale_sync_errors")[0]
        failures = figures(doc, "scale_reconnects")[0]
        rss = figures(doc, "scale_rss")[0]
        upd = figures(doc, "scale_update_latency_p50")[0]
        ceiling = f["reference"]["ceiling"]
        out.append([f"Scale: {p['clusters']} clusters x {p['objects_per_cluster']['total']:,} "
                    f"objects ({p['total_keys']:,} keys) on {p['remote_etcd_processes']} etcd "
                    f"processes",
                    f"ready {f['value']} s after start; peak sync queue {n(queue['value'])}; "
                    f"{n(errors['value'])} sync errors; {n(failures['value'])} reconnects; RSS "
                    f"{rss['after_sync_mib']} MiB synced, {rss['value']} MiB peak",
                    f"bare writer: {ceiling['seconds']} s for the same keys" if ceiling else "-",
                    f"ready ≤ 30 s: {verdict(f['value'] <= 30)}; 0 errors: "
                    f"{verdict(errors['value'] == 0)}; 0 reconnects: "
                    f"{verdict(failures['value'] == 0)}"])
        u = upd["params"]
        out.append([f"Scale: then {u['updates_per_s']:g} updates/s for {u['seconds']:g} s",
                    f"p50 {upd['value']} ms, p99 {upd['p99_ms']} ms, max {upd['max_ms']} ms; "
                    f"converged: {u['converged']}", "-", "-"])

    doc = load("restart", quick)
    machine(doc)
    for f in figures(doc, "restart_time_to_ready"):
        writes = figures(doc, "restart_local_writes")[0]
        changed = figures(doc, "restart_after_changes_local_writes")[0]
        out.append([f"Restart (kill -9) on {f['params']['cached_keys']:,} cached keys",
                    f"ready after {f['value']} s; {writes['value']} local writes (revision "
                    f"+{writes['revisions']}); after {changed['reference']['expected']:,} "
                    f"remote changes: {n(changed['value'])} writes, ready {changed['ready_s']} s",
                    f"cold sync of the same keys: ready after "
                    f"{f['reference']['cold_sync_ready_s']} s",
                    f"≤ 10 s: {verdict(f['value'] <= 10)}; 0 writes: "
                    f"{verdict(writes['value'] == 0)}"])

    doc = load("profile_sync", quick)
    machine(doc)
    for f in figures(doc, "profile_sync"):
        top = "; ".join(f"{c['category']} {c['share']:.0%}" for c in f["categories"][:5])
        out.append(["Profile of the initial sync (daemon CPU)",
                    f"{f['cpu_s']['daemon']} CPU-s: {top}",
                    f"local etcd {f['cpu_s']['local_etcd']} CPU-s, remote etcd "
                    f"{f['cpu_s']['remote_etcd']} CPU-s", "-"])
    return machines, out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    floor_machines, floors = floor_rows(args.quick)
    machines, table = rows(args.quick)
    if not table and not floors:
        print("no results", file=sys.stderr)
        return 1
    for m in dict.fromkeys(floor_machines + machines):
        print(f"Machine: {m}")
    if floors:
        print()
        print("| figure (issue M) | ours: median (min-max) | reference, same run | ratio | goal "
              "| file |")
        print("|---|---|---|---|---|---|")
        for row in floors:
            print("| " + " | ".join(row) + " |")
    if table:
        print()
        print("| figure | measured | reference (same run) | target |")
        print("|---|---|---|---|")
        for row in table:
            print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
