"""Hostile and malformed input: what a broken or malicious remote can do to KVStoreMesh.

A remote cluster's etcd is outside our control.  Whatever it holds — random bytes,
truncated JSON, values at etcd's size limit, keys with any characters, thousands of
keys in one txn, keys under *another* cluster's name or outside its prefixes — the
daemon must never crash, never write outside ``cilium/cache/<res>/v1/<that
cluster>/``, ``cilium/synced/<that cluster>/`` and ``cilium/cluster-config/<that
cluster>``, and keep syncing every other cluster.  The same goes for malformed
config files and certificate files: a clear error naming the file, in the status
of that remote only.

Hypothesis draws the input; one mesh (real etcd processes, the daemon in-process)
serves all examples of a test, so each example costs a few etcd writes and one
convergence check.  ``@given`` cannot drive ``async def`` tests, so each test owns
an :class:`asyncio.Runner` and runs every example's coroutine on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from harness import EtcdFactory, Pki
from harness.churn import run_heartbeats
from harness.convergence import WriteAudit, convergence_report, wait_converged
from harness.mesh import MeshEnv, Remote, sample_state
from harness.oracle import identity_bounds
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clustermesh.etcd.client import OP_OVERHEAD, REQUEST_OVERHEAD, delete_op, put_op
from clustermesh.keys import ENDPOINTS, IDENTITIES, NODES, RESOURCES, SERVICES, Resource

EXAMPLES = settings(max_examples=20, deadline=None, derandomize=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])
MAX_VALUE = 1_400_000  # below etcd's default --max-request-bytes (1.5 MiB) with the key
LOCAL_LIMIT = 1536 * 1024  # the daemon's --max-request-bytes default = local etcd's limit


# ------------------------------------------------------------------------ the mesh


@dataclass
class Hostile:
    runner: asyncio.Runner
    env: MeshEnv
    good: Remote
    evil: Remote
    audit: WriteAudit
    examples: int = 0

    def run(self, coro: Any) -> Any:
        return self.runner.run(coro)


@contextlib.contextmanager
def hostile_mesh(tmp_path: Path, factory: EtcdFactory, *,
                 evil_args: tuple[str, ...] = ("--max-txn-ops=10000",),
                 **options: Any) -> Iterator[Hostile]:
    """A well-behaved ``good`` cluster and an ``evil`` one (whose etcd takes huge txns),
    the daemon mirroring both, heartbeats kept fresh, and a write audit on the local etcd."""
    with asyncio.Runner() as runner:
        env = runner.run(MeshEnv.create(tmp_path / "mesh", factory))
        heartbeats: asyncio.Task[None] | None = None
        audit: WriteAudit | None = None
        try:
            async def setup() -> Hostile:
                nonlocal heartbeats, audit
                good = await env.add_remote("good", 1, service_exports=True, write_file=False)
                evil_server = factory(name="remote-evil", extra_args=list(evil_args))
                evil = await env.add_remote("evil", 2, server=evil_server,
                                            service_exports=True, write_file=False)
                for remote in (good, evil):
                    await remote.publish(sample_state(remote.name, remote.config.id))
                    await remote.write_canaries()
                    env.write_remote_file(remote)
                audit = await WriteAudit(env.local, lambda: list(env.remotes)).start()
                await env.start_mesh(**{"heartbeat_timeout": 5.0,
                                        "status_check_interval": 1.0, **options})
                await env.wait_ready()
                heartbeats = asyncio.create_task(run_heartbeats([good, evil], 0.5))
                return Hostile(runner, env, good, evil, audit)

            hostile = runner.run(setup())
            yield hostile
            violations = runner.run(audit.stop()) if audit is not None else []
            assert not violations, f"daemon wrote outside the allowed prefixes: {violations[:10]}"
        finally:
            async def teardown() -> None:
                if heartbeats is not None:
                    heartbeats.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await heartbeats
                if audit is not None:
                    with contextlib.suppress(Exception):
                        await audit.stop()
                await env.close()

            runner.run(teardown())


async def good_still_syncs(h: Hostile) -> None:
    """A live update on the good cluster reaches the cache promptly."""
    suffix = f"probe-{h.examples}"
    value = json.dumps({"Name": suffix, "Cluster": "good", "ClusterID": 1,
                        "at": time.time()}).encode()
    await h.good.put(NODES, suffix, value)
    target = NODES.cache_prefix("good").encode() + suffix.encode()
    async with asyncio.timeout(5):
        while (kv := await h.env.local.get(target)) is None or kv.value != value:
            await asyncio.sleep(0.02)


def unstorable(key: bytes, value: bytes) -> bool:
    """Cache entries the local etcd cannot hold (one put above its request limit)."""
    return len(key) + len(value) + OP_OVERHEAD + REQUEST_OVERHEAD > LOCAL_LIMIT


async def check(h: Hostile, timeout: float = 20.0) -> None:
    h.examples += 1
    await good_still_syncs(h)
    report = await wait_converged(h.env, timeout=timeout, unstorable=unstorable)
    assert report.per_cluster.get("good", 0) > 5, report.summary()
    assert h.audit.running, "the audit stopped"
    assert not h.audit.violations, h.audit.violations[:10]


# ---------------------------------------------------------------- hostile remote data

# Characters a key suffix may hold: anything etcd takes, path-like tricks included.
_ODD = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)),
               min_size=0, max_size=30)
_TRICKS = st.sampled_from(["..", "../..", "../../../cluster-config/good", "%2e%2e/%00",
                           " spaced out ", "new\nline", "tab\there", "/", "//", "\x00nul",
                           "\u202eevil", "ünïcödé/ключ/鍵", "a" * 200, "%", "*", "?x=1#f",
                           "../good/node-0", "good/node-0"])
SUFFIX = st.one_of(_ODD, _TRICKS, st.binary(min_size=0, max_size=24).map(
    lambda b: b.decode("latin-1")))


def _valid_value(resource: Resource, cluster: str, cluster_id: int, suffix: str) -> bytes:
    """An entry the agents' rules accept, for a given key suffix (best effort)."""
    if resource is NODES:
        return json.dumps({"Name": suffix, "Cluster": cluster, "ClusterID": cluster_id}).encode()
    if resource is IDENTITIES:
        return f"k8s:app=x;k8s:io.cilium.k8s.policy.cluster={cluster};".encode()
    if resource is ENDPOINTS:
        low, _ = identity_bounds(cluster_id, 255)
        return json.dumps({"IP": suffix, "ID": low + 1}).encode()
    namespace, _, name = suffix.partition("/")
    doc: dict[str, Any] = {"cluster": cluster, "namespace": namespace, "name": name}
    if resource is SERVICES:
        doc |= {"clusterID": cluster_id, "frontends": {}, "backends": {}}
    else:
        doc |= {"exportCreationTimestamp": "2026-01-01T00:00:00Z", "type": "ClusterSetIP",
                "sessionAffinity": "None"}
    return json.dumps(doc).encode()


@st.composite
def values(draw: st.DrawFn, resource: Resource, suffix: str) -> bytes:
    kind = draw(st.sampled_from(["bytes", "truncated", "valid", "huge", "empty", "deep"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "empty":
        return b""
    if kind == "deep":  # nesting that breaks naive recursive decoders
        depth = draw(st.integers(100, 50_000))
        return b"[" * depth + b"]" * draw(st.integers(0, depth))
    valid = _valid_value(resource, "evil", 2, suffix)
    if kind == "truncated":
        return valid[:draw(st.integers(0, max(0, len(valid) - 1)))]
    if kind == "valid":
        return valid
    size = draw(st.sampled_from([64 * 1024, 512 * 1024, MAX_VALUE]))
    seed = draw(st.integers(0, 2**32))
    pad = random.Random(seed).randbytes(size // 2).hex()[:size]
    if resource is NODES and draw(st.booleans()):  # huge and still a valid node
        return json.dumps({"Name": suffix, "Cluster": "evil", "ClusterID": 2,
                           "pad": pad[:size - 200]}).encode()
    return pad.encode()


# Keys the evil cluster's etcd holds that are not its own: another cluster's state and
# canaries, its cluster-config, the cache layout, prefix look-alikes, odd top levels.
FOREIGN = st.sampled_from([
    "cilium/state/nodes/v1/good/node-0", "cilium/state/nodes/v1/good/evil-node",
    "cilium/state/services/v1/good/default/svc-0", "cilium/state/serviceexports/v1/good/x/y",
    "cilium/cluster-config/good", "cilium/cluster-config/evil2",
    "cilium/synced/good/cilium/state/nodes/v1", "cilium/synced/good/cilium/cache/nodes/v1",
    "cilium/synced/evil/cilium/state/unknown/v1", "cilium/synced/evil/../good/x",
    "cilium/cache/nodes/v1/good/node-0", "cilium/cache/nodes/v1/evil/not-state",
    "cilium/state/nodes/v1/evilx/node", "cilium/state/nodes/v1/evil", "cilium/state/nodes/v1",
    "cilium/state/identities/v1/value/k8s:app=x/node", "cilium/state/ip/v1/other/10.0.0.1",
    "cilium/.heartbeat-evil", "cilium/.initlock/x", "cilium/state/noderegister/v1/x",
    "cilium/", "cilium", "/etc/passwd", "\x00", "\xff\xfe", "",
])


@st.composite
def actions(draw: st.DrawFn) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["put", "put", "put", "foreign", "txn", "delete",
                                     "config"]))
        if kind == "put":
            resource = draw(st.sampled_from(RESOURCES))
            suffix = draw(SUFFIX)
            out.append(("put", resource, suffix, draw(values(resource, suffix))))
        elif kind == "foreign":
            key = draw(FOREIGN) + draw(st.sampled_from(["", "/x", "/\n", "/..", "/%00"]))
            out.append(("foreign", key, draw(st.binary(max_size=64))))
        elif kind == "txn":
            out.append(("txn", draw(st.integers(1000, 5000)), draw(st.integers(0, 2**32))))
        elif kind == "delete":
            out.append(("delete", draw(st.sampled_from(RESOURCES))))
        else:
            out.append(("config", draw(st.binary(max_size=80))))
    return out


async def apply(h: Hostile, plan: list[tuple[Any, ...]]) -> None:
    evil = h.evil
    for action in plan:
        kind = action[0]
        if kind == "put":
            _, resource, suffix, value = action
            await evil.client.put(evil.key(resource, suffix), value)
        elif kind == "foreign":
            _, key, value = action
            if key:
                await evil.client.put(key.encode("utf-8", "surrogateescape"), value)
        elif kind == "txn":  # thousands of keys in one remote txn
            _, count, seed = action
            rng = random.Random(seed)
            ops = []
            for n in range(count):
                resource = rng.choice(RESOURCES)
                suffix = f"txn-{seed}-{n}" if resource is not ENDPOINTS else \
                    f"10.99.{n // 256 % 256}.{n % 256}"
                value = (_valid_value(resource, "evil", 2, suffix) if rng.random() < 0.7
                         else rng.randbytes(rng.randrange(0, 40)))
                ops.append(put_op(evil.key(resource, suffix), value))
            await evil.client.txn(success=ops)
        elif kind == "delete":
            await evil.client.txn(success=[delete_op(evil.prefix(action[1]).encode(),
                                                     prefix=True)])
        else:  # a garbage cluster-config: the daemon keeps the last valid one
            await evil.client.put(b"cilium/cluster-config/evil", action[1])
    # The remote comes back to a valid cluster-config (a config *change* would restart
    # the session; garbage is ignored and so must be its disappearance).
    await evil.write_config()


@pytest.mark.parametrize("validate", [True, False], ids=["validating", "raw"])
def test_hostile_remote_data(tmp_path: Path, etcd_factory: EtcdFactory, validate: bool) -> None:
    with hostile_mesh(tmp_path, etcd_factory, validate_remote_data=validate) as h:

        @EXAMPLES
        @given(plan=actions())
        def example(plan: list[tuple[Any, ...]]) -> None:
            h.run(apply(h, plan))
            h.run(check(h))

        example()
        mesh = h.env.mesh
        assert mesh is not None
        assert mesh.remotes["good"].status().failures == 0
        assert mesh.remotes["evil"].status().ready
        if validate:
            assert mesh.remotes["evil"].rejections.total > 0


# --------------------------------------------------------------- oversized values


def test_value_the_local_etcd_cannot_hold_does_not_stall_the_mesh(
        tmp_path: Path, etcd_factory: EtcdFactory) -> None:
    """A remote whose etcd allows bigger requests than ours writes a value we cannot
    store.  That one entry cannot be cached (and must not linger with an old value),
    but nothing else may stall: not the same cluster's other keys, not other clusters."""
    args = ("--max-txn-ops=10000", "--max-request-bytes=4194304")
    with hostile_mesh(tmp_path, etcd_factory, evil_args=args) as h:
        async def scenario() -> None:
            evil = h.evil
            key = evil.key(NODES, "fat")
            small = json.dumps({"Name": "fat", "Cluster": "evil", "ClusterID": 2}).encode()
            await evil.client.put(key, small)
            await check(h)  # cached at first
            for size in (LOCAL_LIMIT + 10, 2 * 1024 * 1024, LOCAL_LIMIT - 300):
                fat = json.dumps({"Name": "fat", "Cluster": "evil", "ClusterID": 2,
                                  "pad": "f" * size}).encode()
                await evil.client.put(key, fat)
                await evil.put(NODES, f"after-{size}", json.dumps(
                    {"Name": f"after-{size}", "Cluster": "evil", "ClusterID": 2}).encode())
                await check(h)
                cached = await h.env.local.get(NODES.cache_prefix("evil").encode() + b"fat")
                assert cached is None or cached.value == fat  # never the stale small one
            # A flush (what every initial sync ends with) must not wait for the write
            # that can never succeed: a cluster added now gets ready.
            late = await h.env.add_remote("late", 3, write_file=False)
            await late.publish(sample_state("late", 3))
            await late.write_canaries()
            h.env.write_remote_file(late)
            await h.env.wait_ready(timeout=10)
            await check(h)
            report = await convergence_report(h.env, unstorable=unstorable)
            assert report.ok, report.summary()
            mesh = h.env.mesh
            assert mesh is not None
            assert mesh.remotes["evil"].rejections.counts[("nodes", "too-large")] >= 2

        h.run(scenario())


# ------------------------------------------------------ malformed config and certs


MALFORMED = ("yaml", "not-a-list", "no-port", "bad-scheme", "cert-no-key", "password-no-user",
             "binary", "tls-garbage", "tls-truncated", "tls-swapped", "tls-empty", "tls-dir",
             "tls-bad-base64", "tls-missing", "tls-mismatch")
TLS_FIELDS = ("trusted-ca-file", "cert-file", "key-file")


def malformed(kind: str, rng: random.Random, directory: Path, good_url: str, n: int
              ) -> tuple[str, list[Path]]:
    """Config text broken in the way ``kind`` says, and the files its error must name."""
    junk = "".join(rng.choice("abc xyz:{}[]-,'\"\\#&*!|>%@`é鍵\t") for _ in range(
        rng.randrange(1, 30))).strip() or "x"
    if kind == "yaml":
        return f"endpoints: [{json.dumps(junk)}\n  - {{: ]\n", []
    if kind == "not-a-list":
        return f"endpoints: {rng.choice([0, 1, -5, 'true', 'false', '{a: 1}'])}\n", []
    if kind == "no-port":
        return "endpoints:\n- https://127.0.0.1\n", []
    if kind == "bad-scheme":
        return f"endpoints:\n- ftp://127.0.0.1:2379/{junk.encode().hex()}\n", []
    if kind == "cert-no-key":
        return f"endpoints:\n- {good_url}\ncert-file: {directory / 'x.crt'}\n", []
    if kind == "password-no-user":
        return f"endpoints:\n- {good_url}\npassword: {json.dumps(junk)}\n", []
    if kind == "binary":
        return "endpoints:\n- " + rng.randbytes(rng.randrange(1, 40)).decode(
            "latin-1") + "\n\x00\xff", []
    if kind == "tls-mismatch":  # a valid key, of another certificate
        return (f"endpoints:\n- {good_url.replace('http://', 'https://')}\n"
                f"trusted-ca-file: {directory / 'ca.pem'}\ncert-file: {directory / 'c.pem'}\n"
                f"key-file: {directory / 'other.key'}\n", [directory / "other.key"])
    # TLS files: one of them points at something broken.
    which = rng.choice(TLS_FIELDS)
    path = directory / f"bad-{n}.pem"
    pem = rng.choice(["CERTIFICATE", "PRIVATE KEY", "EC PRIVATE KEY"])
    if kind == "tls-garbage":
        path.write_bytes(rng.randbytes(rng.randrange(1, 200)).replace(b"-----BEGIN", b""))
    elif kind == "tls-truncated":
        path.write_text(f"-----BEGIN {pem}-----\nMIIB")
    elif kind == "tls-swapped":
        other = "CERTIFICATE" if which == "key-file" else "PRIVATE KEY"
        path.write_text(f"-----BEGIN {other}-----\nAAAA\n-----END {other}-----\n")
    elif kind == "tls-empty":
        path.write_text(rng.choice(["", "\n", "   \n"]))
    elif kind == "tls-dir":
        path.mkdir()
    elif kind == "tls-bad-base64":
        body = "".join(rng.choice("ABCDEF!@#$%^&*") for _ in range(rng.randrange(1, 60)))
        path.write_text(f"-----BEGIN {pem}-----\n{body}\n-----END {pem}-----\n")
    else:
        path = directory / f"missing-{n}.pem"
    valid = {"trusted-ca-file": directory / "ca.pem", "cert-file": directory / "c.pem",
             "key-file": directory / "k.pem"}
    lines = [f"endpoints:\n- {good_url.replace('http://', 'https://')}"]
    for field, default in valid.items():
        lines.append(f"{field}: {path if field == which else default}")
    return "\n".join(lines) + "\n", [path]


def test_malformed_config_and_certificate_files(tmp_path: Path, etcd_factory: EtcdFactory,
                                                pki: Pki) -> None:
    with hostile_mesh(tmp_path, etcd_factory) as h:
        env = h.env
        mesh = env.mesh
        assert mesh is not None
        certs = tmp_path / "certs"
        certs.mkdir()
        # Valid material for the fields an example does not break.
        client = pki.client("remote")
        (certs / "ca.pem").write_bytes(pki.ca_file.read_bytes())
        (certs / "c.pem").write_bytes(client.cert_file.read_bytes())
        (certs / "k.pem").write_bytes(client.key_file.read_bytes())
        (certs / "other.key").write_bytes(pki.client("alice").key_file.read_bytes())
        good_url = h.good.server.endpoints[0]
        config = env.config_dir / "broken"
        counter = iter(range(10**6))

        def one(kind: str, rng: random.Random) -> str:
            n = next(counter)
            text, files = malformed(kind, rng, certs, good_url, n)
            before = mesh.remotes.get("broken")
            tmp = env.config_dir / ".broken.tmp"
            tmp.write_bytes(f"# example {n}\n{text}".encode("utf-8", "replace"))
            tmp.replace(config)

            async def failed() -> str:
                async with asyncio.timeout(10):
                    while True:
                        remote = mesh.remotes.get("broken")
                        if remote is not None and remote is not before \
                                and remote.status().failures > (before.status().failures
                                                             if before else 0):
                            return remote.status().status
                        await asyncio.sleep(0.02)

            status = h.run(failed())
            assert str(config) in status, (kind, status)
            for path in files:
                assert str(path) in status, (kind, status)
            h.run(good_still_syncs(h))
            return status

        # Every kind once (the statuses are printed: pytest -s shows them), then hypothesis.
        for kind in MALFORMED:
            print(f"{kind}: {one(kind, random.Random(kind))}")

        @EXAMPLES
        @given(kind=st.sampled_from(MALFORMED), rng=st.randoms(use_true_random=False))
        def example(kind: str, rng: random.Random) -> None:
            one(kind, rng)

        example()
        config.unlink()
        h.run(check(h))
        assert mesh.remotes["good"].status().failures == 0
        assert mesh.remotes["evil"].status().failures == 0
