#!/usr/bin/env python3
"""Throughput of the asyncio etcd client (clustermesh.etcd) against a real local etcd.

Starts its own single-member etcd (temporary data dir, free loopback ports, 8 GiB
backend quota, log in a file; killed at exit even on error or Ctrl-C), then
measures, each run ``--repeat`` times and reported as median with min and max:

1. ``sequential_put``  puts/s, one ``await client.put()`` at a time;
2. ``batched_put``     keys/s through ``BatchWriter(max_txn_ops=128, max_inflight=1|4|8)``,
                       a fresh key prefix per run;
3. ``paginated_range`` keys/s of ``list_prefix(page_size=5000|1000)`` over those keys;
4. ``watch_catchup``   events/s of a watch opened at the revision before the keys were
                       written, counted until it has caught up to the final revision
                       (keys written as 128-op txns, and as single puts).

Each figure is printed as one JSON line on stdout (progress goes to stderr) and all
of them are written, with machine and etcd details, to ``--output``
(``bench/results/client_bench.json``).  See bench/README.md.

    python bench/client_bench.py            # full run, a few minutes on 2 cores
    python bench/client_bench.py --quick    # smoke run, seconds
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # so that `python bench/client_bench.py` works from anywhere
    sys.path.insert(0, str(REPO))

from bench._batch import BatchWriter, Put  # noqa: E402
from bench._etcd import EtcdProcess, exit_on_termination_signals  # noqa: E402
from bench._mesh import cpu_model, mem_total_gib, version_of  # noqa: E402
from clustermesh.etcd.client import EtcdClient, prefix_range_end  # noqa: E402
from clustermesh.etcd.config import parse_etcd_config  # noqa: E402

DEFAULT_OUTPUT = REPO / "bench" / "results" / "client_bench.json"
QUICK_OUTPUT = REPO / "bench" / "results" / "client_bench-quick.json"
ETCD_DEFAULT_MAX_TXN_OPS = 128
KEY_ROOT = "cilium/state/ip/v1"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- data


def ip_of(i: int) -> str:
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


def ipcache_value(i: int, size: int) -> bytes:
    """An ipcache entry as Cilium writes it (identity.IPIdentityPair JSON), ``size`` bytes.

    ``Metadata`` is padded to reach the size; if even the unpadded entry is longer than
    ``size`` it is cut (then it is no longer valid JSON, which etcd does not care about).
    """
    doc: dict[str, Any] = {
        "IP": ip_of(i), "Mask": None, "HostIP": f"192.168.{(i >> 8) & 255}.{i & 255}",
        "ID": 100000 + i % 60000, "Key": 0, "Metadata": "",
        "K8sNamespace": f"namespace-{i % 97}", "K8sPodName": f"deployment-{i:06x}-7d9f8b6c5-x2k4q",
        "NamedPorts": [{"Name": "http", "Port": 8080, "Protocol": "TCP"},
                       {"Name": "metrics", "Port": 9090, "Protocol": "TCP"}],
    }
    base = json.dumps(doc, separators=(",", ":")).encode()
    missing = size - len(base)
    if missing <= 0:
        return base[:size]
    pad = f"cilium-global:default:node-{i % 500}:{i}:"
    doc["Metadata"] = (pad * (missing // len(pad) + 1))[:missing]
    return json.dumps(doc, separators=(",", ":")).encode()


@dataclass
class Dataset:
    """Keys written under ``prefix`` and the revisions around the write."""

    prefix: bytes
    count: int
    rev_before: int
    rev_after: int


class Values:
    """Values ``0..n-1`` built once and reused for every run (keys differ per run)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._values: list[bytes] = []

    def take(self, n: int) -> list[bytes]:
        while len(self._values) < n:
            self._values.append(ipcache_value(len(self._values), self.size))
        return self._values[:n]


def keys_under(prefix: bytes, n: int) -> list[bytes]:
    return [prefix + ip_of(i).encode() for i in range(n)]


# ----------------------------------------------------------------------------- figures


@dataclass
class Figure:
    figure: str
    unit: str
    params: dict[str, Any]
    samples: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    client_cpu: list[float] = field(default_factory=list)
    etcd_cpu: list[float] = field(default_factory=list)

    def add(self, amount: int, span: Span) -> float:
        rate = amount / span.seconds
        self.samples.append(rate)
        self.seconds.append(span.seconds)
        self.client_cpu.append(span.client_cpu)
        self.etcd_cpu.append(span.etcd_cpu)
        return rate

    def record(self) -> dict[str, Any]:
        return {
            "figure": self.figure,
            "value": round(statistics.median(self.samples), 1),
            "unit": self.unit,
            "min": round(min(self.samples), 1),
            "max": round(max(self.samples), 1),
            "runs": len(self.samples),
            "params": {**self.params,
                       "samples": [round(s, 1) for s in self.samples],
                       "seconds": [round(s, 3) for s in self.seconds],
                       # CPU seconds used during each run, by this process and by etcd
                       # (out of 2 x seconds on 2 cores): who was the bottleneck.
                       "client_cpu_s": [round(s, 3) for s in self.client_cpu],
                       "etcd_cpu_s": [round(s, 3) for s in self.etcd_cpu]},
        }


@dataclass
class Span:
    """Wall-clock seconds of a timed section, and the CPU seconds used meanwhile."""

    seconds: float = 0.0
    client_cpu: float = 0.0
    etcd_cpu: float = 0.0


class Meter:
    """Times sections: wall clock, CPU time of this process and CPU time of etcd."""

    def __init__(self, etcd: EtcdProcess) -> None:
        self.etcd = etcd

    @contextlib.contextmanager
    def span(self) -> Iterator[Span]:
        result = Span()
        etcd0 = self.etcd.cpu_seconds()
        client0 = time.process_time()
        start = time.perf_counter()
        try:
            yield result
        finally:
            result.seconds = time.perf_counter() - start
            result.client_cpu = time.process_time() - client0
            result.etcd_cpu = self.etcd.cpu_seconds() - etcd0


class Bench:
    def __init__(self, client: EtcdClient, args: argparse.Namespace, meter: Meter) -> None:
        self.client = client
        self.meter = meter
        self.args = args
        self.values = Values(args.value_size)
        self.records: list[dict[str, Any]] = []
        self._prefixes = 0

    def fresh_prefix(self, tag: str) -> bytes:
        self._prefixes += 1
        return f"{KEY_ROOT}/bench-{self._prefixes:03d}-{tag}/".encode()

    def emit(self, fig: Figure) -> None:
        record = fig.record()
        self.records.append(record)
        print(json.dumps(record), flush=True)

    async def revision(self) -> int:
        return (await self.client.status()).revision

    async def count(self, prefix: bytes) -> int:
        resp = await self.client.range(prefix, prefix_range_end(prefix), count_only=True)
        return int(resp.count)

    async def check_count(self, prefix: bytes, expected: int) -> None:
        found = await self.count(prefix)
        if found != expected:
            raise RuntimeError(f"{prefix!r}: expected {expected} keys, found {found}")

    # ------------------------------------------------------------------ writers

    async def write_batched(self, prefix: bytes, n: int, inflight: int) -> tuple[Span, int, int]:
        """Write n keys with BatchWriter; returns (timing, revision, txns).

        Only ``apply`` is timed (it includes planning the txns and building the
        protobuf requests); the list of Put ops is built beforehand.
        """
        ops = [Put(k, v) for k, v in zip(keys_under(prefix, n), self.values.take(n),
                                         strict=True)]
        writer = BatchWriter(self.client, max_txn_ops=self.args.txn_ops, max_inflight=inflight)
        with self.meter.span() as span:
            revision = await writer.apply(ops)
        return span, revision, writer.txns_sent

    async def write_single_puts(self, prefix: bytes, n: int, concurrency: int) -> float:
        """Write n keys as n Put requests, ``concurrency`` in flight (one revision each)."""
        items = iter(zip(keys_under(prefix, n), self.values.take(n), strict=True))

        async def worker() -> None:
            for key, value in items:
                await self.client.put(key, value)

        start = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            for _ in range(concurrency):
                group.create_task(worker())
        return time.perf_counter() - start

    # ------------------------------------------------------------------ figures

    async def warm_up(self) -> None:
        prefix = self.fresh_prefix("warmup")
        for k, v in zip(keys_under(prefix, 200), self.values.take(200), strict=True):
            await self.client.put(k, v)
        await self.write_batched(prefix, min(self.args.keys, 2000), 4)
        await self.client.list_prefix(prefix)

    async def sequential_put(self) -> None:
        n = self.args.sequential_keys
        fig = Figure("sequential_put", "puts/s",
                     {"keys": n, "value_size": self.args.value_size, "inflight": 1})
        values = self.values.take(n)
        for run in range(self.args.repeat):
            keys = keys_under(self.fresh_prefix(f"seq-r{run}"), n)
            put = self.client.put
            with self.meter.span() as span:
                for key, value in zip(keys, values, strict=True):
                    await put(key, value)
            rate = fig.add(n, span)
            log(f"  sequential_put run {run + 1}: {rate:,.0f} puts/s")
        self.emit(fig)

    async def batched_put(self) -> Dataset | None:
        n = self.args.keys
        figs = {
            inflight: Figure("batched_put", "keys/s", {
                "keys": n, "value_size": self.args.value_size,
                "max_txn_ops": self.args.txn_ops, "max_inflight": inflight,
            })
            for inflight in self.args.inflight
        }
        dataset: Dataset | None = None
        # Interleaved (1, 4, 8, 1, 4, 8...) so the growing database affects all alike.
        for run in range(self.args.repeat):
            for inflight, fig in figs.items():
                prefix = self.fresh_prefix(f"txn{self.args.txn_ops}x{inflight}-r{run}")
                rev_before = await self.revision()
                span, rev_after, txns = await self.write_batched(prefix, n, inflight)
                await self.check_count(prefix, n)
                rate = fig.add(n, span)
                fig.params["txns"] = txns
                log(f"  batched_put inflight={inflight} run {run + 1}: {rate:,.0f} keys/s "
                    f"({txns} txns)")
                if dataset is None:
                    dataset = Dataset(prefix, n, rev_before, rev_after)
        for fig in figs.values():
            self.emit(fig)
        return dataset

    async def paginated_range(self, dataset: Dataset | None) -> None:
        if dataset is None:  # batched_put was not selected: write the keys now (untimed)
            dataset = await self.txn_dataset("range")
        n = dataset.count
        figs = {
            size: Figure("paginated_range", "keys/s", {
                "keys": n, "value_size": self.args.value_size, "page_size": size,
                "method": "list_prefix",
            })
            for size in self.args.page_sizes
        }
        for run in range(self.args.repeat):
            for size, fig in figs.items():
                with self.meter.span() as span:
                    kvs, _revision = await self.client.list_prefix(dataset.prefix,
                                                                   page_size=size)
                if len(kvs) != n:
                    raise RuntimeError(f"list_prefix returned {len(kvs)} keys, expected {n}")
                del kvs
                rate = fig.add(n, span)
                fig.params["pages"] = -(-n // size)
                log(f"  paginated_range page_size={size} run {run + 1}: {rate:,.0f} keys/s")
        for fig in figs.values():
            self.emit(fig)

    async def txn_dataset(self, tag: str) -> Dataset:
        n = self.args.keys
        prefix = self.fresh_prefix(tag)
        rev_before = await self.revision()
        _span, rev_after, _txns = await self.write_batched(prefix, n, 4)
        return Dataset(prefix, n, rev_before, rev_after)

    async def watch_catchup(self) -> None:
        n = self.args.keys
        for mode in self.args.watch_writes:
            start = time.perf_counter()
            if mode == "txn":
                dataset = await self.txn_dataset(f"watch-txn{self.args.txn_ops}")
                written = (f"BatchWriter(max_txn_ops={self.args.txn_ops}, max_inflight=4): "
                           f"one revision per txn")
            else:
                prefix = self.fresh_prefix("watch-put")
                rev_before = await self.revision()
                await self.write_single_puts(prefix, n, self.args.put_concurrency)
                dataset = Dataset(prefix, n, rev_before, await self.revision())
                written = (f"single puts, {self.args.put_concurrency} in flight: "
                           f"one revision per key")
            setup = time.perf_counter() - start
            await self.check_count(dataset.prefix, n)
            if await self.revision() != dataset.rev_after:
                raise RuntimeError("someone else wrote to the benchmark etcd")
            revisions = dataset.rev_after - dataset.rev_before
            log(f"  watch_catchup[{mode}]: wrote {n} keys in {setup:.1f}s "
                f"({revisions} revisions)")
            fig = Figure("watch_catchup", "events/s", {
                "keys": n, "value_size": self.args.value_size, "written_as": mode,
                "written_how": written, "revisions": revisions,
                "start_revision": dataset.rev_before + 1, "final_revision": dataset.rev_after,
            })
            for run in range(self.args.repeat):
                events, responses, span = await self.catch_up(dataset)
                if events != n:
                    raise RuntimeError(f"watch delivered {events} events, expected {n}")
                rate = fig.add(events, span)
                fig.params["responses"] = responses
                log(f"  watch_catchup[{mode}] run {run + 1}: {rate:,.0f} events/s "
                    f"({responses} responses)")
            self.emit(fig)

    async def catch_up(self, dataset: Dataset) -> tuple[int, int, Span]:
        """Watch from the revision after ``rev_before`` until ``rev_after`` is delivered.

        Timed from opening the watch stream to receiving the final revision.
        """
        events = responses = 0
        watch = self.client.watch(dataset.prefix, start_revision=dataset.rev_before + 1,
                                  progress_notify=False)
        with self.meter.span() as span:
            async with asyncio.timeout(self.args.watch_timeout), watch:
                stream = aiter(watch)
                async with contextlib.aclosing(stream):  # type: ignore[type-var]
                    async for batch in stream:
                        responses += 1
                        events += len(batch.events)
                        if batch.revision >= dataset.rev_after:
                            break
        return events, responses, span


# ----------------------------------------------------------------------------- machine


def machine_info() -> dict[str, Any]:
    try:
        nproc = len(os.sched_getaffinity(0))
    except AttributeError:
        nproc = os.cpu_count() or 0
    return {
        "nproc": nproc,
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "mem_total_gib": mem_total_gib(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "grpcio": version_of("grpcio"),
        "protobuf": version_of("protobuf"),
    }


# ----------------------------------------------------------------------------- main


def int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of integers") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: need positive integers")
    return values


def choice_list(choices: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        values = [part.strip() for part in text.split(",") if part.strip()]
        bad = [v for v in values if v not in choices]
        if bad or not values:
            raise argparse.ArgumentTypeError(
                f"{text!r}: choose from {', '.join(choices)} (comma-separated)")
        return values
    return parse


FIGURES = ("sequential", "batched", "range", "watch")


def parse_args(argv: Iterable[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark the asyncio etcd client against a local etcd it starts itself.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--keys", type=int, default=None,
                   help="keys per batched/range/watch run (default 100000, --quick 5000)")
    p.add_argument("--sequential-keys", type=int, default=None,
                   help="puts per sequential run (default 5000, --quick 500)")
    p.add_argument("--value-size", type=int, default=300, help="bytes per value")
    p.add_argument("--repeat", type=int, default=None,
                   help="runs per figure; the median is reported (default 3, --quick 1)")
    p.add_argument("--quick", action="store_true", help="small N for a smoke run")
    p.add_argument("--output", type=Path, default=None,
                   help=f"results file (default {DEFAULT_OUTPUT.relative_to(REPO)}, "
                        f"--quick {QUICK_OUTPUT.relative_to(REPO)})")
    p.add_argument("--figures", type=choice_list(FIGURES), default=list(FIGURES),
                   help="which figures to measure: " + ",".join(FIGURES))
    p.add_argument("--txn-ops", type=int, default=128,
                   help="BatchWriter max_txn_ops (operations per txn)")
    p.add_argument("--inflight", type=int_list, default=[1, 4, 8],
                   help="BatchWriter max_inflight values to measure")
    p.add_argument("--page-sizes", type=int_list, default=[5000, 1000],
                   help="list_prefix page sizes to measure")
    p.add_argument("--watch-writes", type=choice_list(("txn", "put")), default=["txn", "put"],
                   help="how the keys a watch catches up on are written: txn (BatchWriter, "
                        "one revision per txn) and/or put (one revision per key)")
    p.add_argument("--put-concurrency", type=int, default=64,
                   help="puts in flight when writing the single-put watch data (untimed)")
    p.add_argument("--watch-timeout", type=float, default=600.0,
                   help="seconds one watch catch-up may take")
    p.add_argument("--server-max-txn-ops", "--max-txn-ops", dest="server_max_txn_ops",
                   type=int, default=None, metavar="N",
                   help="pass --max-txn-ops=N to etcd (etcd's default is 128)")
    p.add_argument("--quota-backend-gib", type=float, default=8.0,
                   help="etcd --quota-backend-bytes, in GiB")
    p.add_argument("--keep-etcd-dir", action="store_true",
                   help="keep etcd's temporary data dir and log after the run")
    args = p.parse_args(None if argv is None else list(argv))
    if args.keys is None:
        args.keys = 5000 if args.quick else 100_000
    if args.sequential_keys is None:
        args.sequential_keys = 500 if args.quick else 5000
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.output is None:
        args.output = QUICK_OUTPUT if args.quick else DEFAULT_OUTPUT
    for name in ("keys", "sequential_keys", "value_size", "repeat", "txn_ops",
                 "put_concurrency"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.keys > 1 << 24:
        p.error("--keys: at most 16777216 (keys are 10.x.y.z addresses)")
    server_limit = args.server_max_txn_ops or ETCD_DEFAULT_MAX_TXN_OPS
    if args.txn_ops > server_limit:
        p.error(f"--txn-ops {args.txn_ops} exceeds etcd's --max-txn-ops ({server_limit}); "
                f"pass --server-max-txn-ops {args.txn_ops}")
    return args


async def run(args: argparse.Namespace, etcd: EtcdProcess) -> dict[str, Any]:
    config = parse_etcd_config(f"endpoints:\n- {etcd.client_url}\n")
    async with EtcdClient(config, name="bench", request_timeout=120.0) as client:
        status = await client.status()
        bench = Bench(client, args, Meter(etcd))
        log(f"etcd {status.version} at {etcd.client_url}; warming up")
        await bench.warm_up()
        dataset = None
        if "sequential" in args.figures:
            log(f"sequential_put: {args.sequential_keys} puts x {args.repeat}")
            await bench.sequential_put()
        if "batched" in args.figures:
            log(f"batched_put: {args.keys} keys x {args.repeat} x max_inflight {args.inflight}")
            dataset = await bench.batched_put()
        if "range" in args.figures:
            log(f"paginated_range: page sizes {args.page_sizes} x {args.repeat}")
            await bench.paginated_range(dataset)
        if "watch" in args.figures:
            log(f"watch_catchup: {args.keys} keys written as {args.watch_writes}")
            await bench.watch_catchup()
        final = await client.status()
        return {
            "server_version": status.version,
            "final_revision": final.revision,
            "db_size_bytes": final.db_size,
            "records": bench.records,
        }


def write_results(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(document, indent=2) + "\n")
    tmp.replace(path)


def summary(records: Sequence[dict[str, Any]]) -> str:
    lines = []
    for r in records:
        p = r["params"]
        detail = ", ".join(f"{k}={p[k]}" for k in ("max_inflight", "page_size", "written_as")
                           if k in p)
        name = f"{r['figure']}[{detail}]" if detail else r["figure"]
        wall = sum(p["seconds"]) or 1.0
        lines.append(f"  {name:<34} {r['value']:>9,.0f} {r['unit']:<9} "
                     f"(min {r['min']:,.0f}, max {r['max']:,.0f}, {r['runs']} runs; "
                     f"CPU: client {sum(p['client_cpu_s']) / wall:.0%}, "
                     f"etcd {sum(p['etcd_cpu_s']) / wall:.0%})")
    return "\n".join(lines)


def main(argv: Iterable[str] | None = None) -> int:
    args = parse_args(argv)
    exit_on_termination_signals()
    started = dt.datetime.now(dt.UTC)
    extra = []
    if args.server_max_txn_ops is not None:
        extra.append(f"--max-txn-ops={args.server_max_txn_ops}")
    etcd = EtcdProcess(extra_args=extra, quota_backend_bytes=int(args.quota_backend_gib * 1024**3),
                       keep_dir=args.keep_etcd_dir)
    log(f"etcd binary: {etcd.binary} (found via {etcd.found_via}), version {etcd.version}")
    machine = machine_info()
    log(f"machine: {machine['nproc']} CPUs ({machine['cpu_model']}), "
        f"Python {machine['python']}, grpcio {machine['grpcio']}")
    try:
        with etcd:
            log(f"etcd data dir and log: {etcd.dir}")
            t0 = time.perf_counter()
            result = asyncio.run(run(args, etcd))
            elapsed = time.perf_counter() - t0
            data_bytes = etcd.data_size()
    except KeyboardInterrupt:
        log("interrupted; etcd stopped")
        return 130
    document = {
        "benchmark": "bench/client_bench.py",
        "date": started.isoformat(timespec="seconds"),
        "duration_s": round(elapsed, 1),
        "machine": machine,
        "etcd": {
            "binary": str(etcd.binary),
            "found_via": etcd.found_via,
            "version": etcd.version,
            "server_version": result["server_version"],
            "args": etcd.args()[1:],  # without --name
            "final_revision": result["final_revision"],
            "db_size_bytes": result["db_size_bytes"],
            "data_dir_bytes": data_bytes,
        },
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "figures": result["records"],
    }
    # Temporary paths mean nothing after the run.
    document["etcd"]["args"] = [a for a in document["etcd"]["args"]
                                if not a.startswith(("--data-dir=", "--listen-", "--advertise-",
                                                     "--initial-"))]
    write_results(args.output, document)
    log(f"\nsummary ({elapsed:.0f}s, etcd {etcd.version}, {machine['nproc']} CPUs):")
    log(summary(result["records"]))
    log(f"results written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
