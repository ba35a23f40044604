#!/usr/bin/env python3
"""Print the KVStoreMesh benchmark results as the Markdown table of README.md.

    python bench/summary.py            # bench/results/<name>.json
    python bench/summary.py --quick    # bench/results/<name>-quick.json

Missing result files are skipped.  Every row shows the figure, its reference measured
in the same run, and the target from the issue.
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

    doc = load("latency", quick)
    machine(doc)
    p50s = figures(doc, "propagation_latency_p50")
    for f in p50s:
        p = f["params"]
        rate = f["rate_ops_per_s"]
        mesh, floor = p["mesh"], p["floor"] or {}
        target = rate >= 2000
        out.append([f"Propagation latency, {p['remotes']} remotes ({p['remote_etcd_processes']} "
                    f"etcd processes), {n(rate)} updates/s, {p['seconds']:g} s",
                    f"p50 {mesh['p50_ms']} ms, p99 {mesh['p99_ms']} ms, max {mesh['max_ms']} ms"
                    f" ({mesh['matched']:,}/{mesh['ops']:,} seen)",
                    f"floor (straight into local etcd): p50 {floor.get('p50_ms')} ms, p99 "
                    f"{floor.get('p99_ms')} ms, max {floor.get('max_ms')} ms",
                    (f"p50 ≤ 5 ms: {verdict(mesh['p50_ms'] <= 5)}; p99 ≤ 25 ms: "
                     f"{verdict(mesh['p99_ms'] <= 25)}") if target else "-"])

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

    doc = load("memory", quick)
    machine(doc)
    for f in figures(doc, "memory_bytes_per_key"):
        pts = ", ".join(f"{p['cached_keys'] // 1000}k: {p['rss_mib']} MiB"
                        for p in f["params"]["points"])
        out.append(["Memory: daemon RSS once synced", f"{n(f['value'])} bytes/key (slope; "
                    f"{pts}; fixed {f['intercept_mib']} MiB)",
                    f"payload (key + value) {f['reference']['payload_bytes_per_key']} bytes/key",
                    f"≤ 1 KB/key: {verdict(f['value'] <= 1024)}"])

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
    machines, table = rows(args.quick)
    if not table:
        print("no results", file=sys.stderr)
        return 1
    for m in machines:
        print(f"Machine: {m}")
    print()
    print("| figure | measured | reference (same run) | target |")
    print("|---|---|---|---|")
    for row in table:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
