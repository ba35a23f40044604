"""KubernetesSource against the in-process fake API server (``harness.fake_kube``).

The source connects through a kubeconfig written into ``tmp_path`` that points at the fake
server over HTTP with a bearer token (or, in the ``--k8s-api-server`` tests, through that
URL with a service-account directory in ``tmp_path``); nothing in the source is patched.
The rate-limit tests give the source's token bucket a clock whose sleeps return at once;
the retry backoff and the recheck of a missing kind run on :mod:`harness.fakeclock`, so
their delays are asserted exactly and no test waits for them.
Where a test shows that something is *not* delivered, it makes a matching change after
the non-matching one and waits for that sentinel: the watch stream is ordered, so once
the sentinel has arrived the other change would have too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from harness.certs import Pki
from harness.fake_kube import (
    CILIUM_ENDPOINTS,
    CILIUM_IDENTITIES,
    CILIUM_NODES,
    ENDPOINT_SLICES,
    NAMESPACES,
    SERVICE_EXPORTS,
    SERVICES,
    FakeKube,
    KubeRequest,
)
from harness.fakeclock import FakeClock

from apiserver.sources import (
    CILIUM_ENDPOINT,
    CILIUM_IDENTITY,
    ENDPOINT_SLICE,
    KINDS,
    NAMESPACE,
    SERVICE,
    SERVICE_EXPORT,
    Kind,
    Obj,
    object_key,
)
from apiserver.sources.kubernetes import (
    ENDPOINTSLICE_SELECTOR,
    KubernetesSource,
    TokenBucket,
    default_label_selectors,
    service_proxy_selector,
)
from clustermesh.backoff import BackoffPolicy
from clustermesh.clock import Clock

Key = tuple[str, str]
#: Retries within a test's patience (on the real clock).
FAST_RETRY = BackoffPolicy(initial=0.02, maximum=0.1)


class RecordingSink:
    """Records every call and keeps the state a correct sink would hold."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self.state: dict[str, dict[Key, Obj]] = {}
        self.synced_kinds: list[str] = []

    def upsert(self, kind: Kind, obj: Obj) -> None:
        self.calls.append(("upsert", kind.name, obj))
        self.state.setdefault(kind.name, {})[object_key(obj)] = obj

    def delete(self, kind: Kind, namespace: str, name: str) -> None:
        self.calls.append(("delete", kind.name, (namespace, name)))
        self.state.setdefault(kind.name, {}).pop((namespace, name), None)

    def replace(self, kind: Kind, objects: Sequence[Obj]) -> None:
        self.calls.append(("replace", kind.name, list(objects)))
        self.state[kind.name] = {object_key(o): o for o in objects}

    def synced(self, kind: Kind) -> None:
        self.calls.append(("synced", kind.name, None))
        self.synced_kinds.append(kind.name)

    def of(self, kind: Kind, op: str | None = None) -> list[tuple[str, Any]]:
        return [(o, p) for o, k, p in self.calls if k == kind.name and (op is None or o == op)]

    def names(self, kind: Kind) -> set[Key]:
        return set(self.state.get(kind.name, {}))


async def wait_for(cond: Callable[[], object], timeout: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or cond}")
        await asyncio.sleep(0.01)


def cep(name: str, namespace: str = "default", **extra: Any) -> Obj:
    return {"metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
            "status": {"id": 1, "networking": {"addressing": [{"ipv4": "10.0.0.1"}]}, **extra}}


def named(name: str, namespace: str | None = None) -> Obj:
    meta: dict[str, Any] = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    return {"metadata": meta}


@pytest.fixture
async def kube() -> AsyncIterator[FakeKube]:
    async with FakeKube() as server:
        yield server


@pytest.fixture
def kubeconfig(kube: FakeKube, tmp_path: Path) -> Path:
    return kube.write_kubeconfig(tmp_path / "kubeconfig")


def make_source(kubeconfig: Path, **kw: Any) -> KubernetesSource:
    kw.setdefault("backoff", FAST_RETRY)
    return KubernetesSource(kubeconfig=kubeconfig, **kw)


@contextlib.asynccontextmanager
async def running(source: KubernetesSource, sink: RecordingSink,
                  kinds: Sequence[Kind] = KINDS) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(source.run(sink, kinds))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def synced(sink: RecordingSink, kinds: Sequence[Kind] = KINDS) -> None:
    await wait_for(lambda: set(sink.synced_kinds) >= {k.name for k in kinds}, what="synced")


async def watching(kube: FakeKube, resources: Sequence[Any]) -> None:
    await wait_for(lambda: all(kube.watch_count(r) >= 1 for r in resources), what="watches")


def rewatches(kube: FakeKube, resource: Any) -> list[KubeRequest]:
    return kube.watch_requests(resource)


async def test_initial_list_paginated(kube: FakeKube, kubeconfig: Path) -> None:
    for i in range(7):
        kube.create(NAMESPACES, named(f"ns-{i}"))
    for i in range(12):
        kube.create(CILIUM_ENDPOINTS, cep(f"pod-{i:02}", f"ns-{i % 3}"))
    for i in range(4):
        kube.create(CILIUM_IDENTITIES, {**named(str(1000 + i)), "security-labels": {"k": "v"}})
    for i in range(2):
        kube.create(CILIUM_NODES, {**named(f"node-{i}"), "spec": {"addresses": []}})
    for i in range(3):
        kube.create(SERVICES, {**named(f"svc-{i}", "ns-1"),
                               "spec": {"clusterIP": f"10.96.0.{i + 10}"}})
    kube.create(ENDPOINT_SLICES, {**named("svc-0-abc", "ns-1"), "addressType": "IPv4",
                                  "endpoints": [{"addresses": ["10.0.0.7"]}]})

    sink = RecordingSink()
    async with running(make_source(kubeconfig, page_size=5), sink):
        await synced(sink)
        await watching(kube, [NAMESPACES, CILIUM_ENDPOINTS, CILIUM_IDENTITIES, CILIUM_NODES,
                              SERVICES, ENDPOINT_SLICES])

    resources = {NAMESPACES: "Namespace", CILIUM_ENDPOINTS: "CiliumEndpoint",
                 CILIUM_IDENTITIES: "CiliumIdentity", CILIUM_NODES: "CiliumNode",
                 SERVICES: "Service", ENDPOINT_SLICES: "EndpointSlice"}
    for resource, kind_name in resources.items():
        calls = [(op, p) for op, k, p in sink.calls if k == kind_name]
        # The list is one replace (all pages together), then synced, then nothing else.
        assert [op for op, _ in calls] == ["replace", "synced"], kind_name
        # Exactly the objects the server holds, as it holds them (built-in kinds get
        # their kind/apiVersion filled in, which the list items lack).
        assert calls[0][1] == kube.objects(resource), kind_name
    # ServiceExport: the CRD is not installed.
    assert [op for op, _ in sink.of(SERVICE_EXPORT)] == ["replace", "synced"]
    assert sink.of(SERVICE_EXPORT)[0][1] == []

    # CiliumEndpoints took three pages of 5, all from one snapshot.
    pages = kube.list_requests(CILIUM_ENDPOINTS)
    assert [r.query.get("limit") for r in pages] == ["5", "5", "5"]
    assert "continue" not in pages[0].query
    assert all("continue" in r.query for r in pages[1:])
    assert all("resourceVersion" not in r.query for r in pages)
    # The watch started from the list's resourceVersion, with bookmarks.
    w = kube.watch_requests(CILIUM_ENDPOINTS)[0]
    assert w.path == "/apis/cilium.io/v2/ciliumendpoints"
    assert w.query["resourceVersion"] == str(kube.resource_version)
    assert w.query["allowWatchBookmarks"] == "true"
    assert w.query["timeoutSeconds"] == "300"
    assert kube.watch_requests(NAMESPACES)[0].path == "/api/v1/namespaces"
    assert kube.watch_requests(ENDPOINT_SLICES)[0].path == (
        "/apis/discovery.k8s.io/v1/endpointslices")


async def test_add_modify_delete(kube: FakeKube, kubeconfig: Path) -> None:
    kube.create(CILIUM_ENDPOINTS, cep("a"))
    sink = RecordingSink()
    async with running(make_source(kubeconfig), sink, [CILIUM_ENDPOINT, NAMESPACE]):
        await synced(sink, [CILIUM_ENDPOINT, NAMESPACE])
        await watching(kube, [CILIUM_ENDPOINTS, NAMESPACES])
        created = kube.create(CILIUM_ENDPOINTS, cep("b", "kube-system"))
        modified = kube.update(CILIUM_ENDPOINTS, cep("a", identity=42))
        kube.delete(CILIUM_ENDPOINTS, "b", "kube-system")
        ns = kube.create(NAMESPACES, named("team-a"))
        await wait_for(lambda: len(sink.of(CILIUM_ENDPOINT)) == 5 and sink.names(NAMESPACE))

    calls = sink.of(CILIUM_ENDPOINT)
    assert [op for op, _ in calls] == ["replace", "synced", "upsert", "upsert", "delete"]
    assert calls[2][1] == created
    assert calls[3][1] == modified and calls[3][1]["status"]["identity"] == 42
    assert calls[4][1] == ("kube-system", "b")
    assert sink.state["CiliumEndpoint"] == {("default", "a"): modified}
    assert sink.state["Namespace"] == {("", "team-a"): ns}


async def test_bookmark_advances_resume_point(kube: FakeKube, kubeconfig: Path) -> None:
    kube.create(CILIUM_ENDPOINTS, cep("a"))
    kube.bookmark_interval = 0.05
    source = make_source(kubeconfig)
    sink = RecordingSink()
    async with running(source, sink, [CILIUM_ENDPOINT]):
        await synced(sink, [CILIUM_ENDPOINT])
        await watching(kube, [CILIUM_ENDPOINTS])
        listed_rv = kube.watch_requests(CILIUM_ENDPOINTS)[0].resource_version
        # Other resources move the global revision on; only a bookmark can tell the
        # CiliumEndpoint watch about it.
        for i in range(3):
            kube.create(NAMESPACES, named(f"ns-{i}"))
        target = str(kube.resource_version)
        await wait_for(lambda: source.status()["CiliumEndpoint"].resource_version == target,
                       what="bookmark")
        assert any(b.resource_version == kube.resource_version for b in kube.bookmarks)
        assert kube.drop_watches() == 1
        await wait_for(lambda: len(kube.watch_requests(CILIUM_ENDPOINTS)) == 2, what="rewatch")
        await watching(kube, [CILIUM_ENDPOINTS])

    assert int(target) > int(listed_rv)
    assert kube.watch_requests(CILIUM_ENDPOINTS)[1].resource_version == target
    assert len(kube.list_requests(CILIUM_ENDPOINTS)) == 1  # no relist
    assert [op for op, _ in sink.of(CILIUM_ENDPOINT)] == ["replace", "synced"]


async def test_dropped_connection_resumes_without_relist(kube: FakeKube,
                                                         kubeconfig: Path) -> None:
    kube.create(CILIUM_ENDPOINTS, cep("a"))
    kube.create(CILIUM_ENDPOINTS, cep("b"))
    sink = RecordingSink()
    async with running(make_source(kubeconfig), sink, [CILIUM_ENDPOINT]):
        await synced(sink, [CILIUM_ENDPOINT])
        await watching(kube, [CILIUM_ENDPOINTS])
        kube.create(CILIUM_ENDPOINTS, cep("c"))
        await wait_for(lambda: ("default", "c") in sink.names(CILIUM_ENDPOINT))
        seen_rv = str(kube.resource_version)
        kube.drop_watches()
        # Changes while disconnected: replayed from the server's history on re-watch.
        kube.delete(CILIUM_ENDPOINTS, "a", "default")
        kube.create(CILIUM_ENDPOINTS, cep("d"))
        await wait_for(lambda: sink.names(CILIUM_ENDPOINT) == {("default", "b"),
                                                               ("default", "c"),
                                                               ("default", "d")})

    assert kube.watch_requests(CILIUM_ENDPOINTS)[-1].resource_version == seen_rv
    assert len(kube.list_requests(CILIUM_ENDPOINTS)) == 1
    ops = [op for op, _ in sink.of(CILIUM_ENDPOINT)]
    assert ops == ["replace", "synced", "upsert", "delete", "upsert"]


async def test_expired_resource_version_relists(kube: FakeKube, kubeconfig: Path) -> None:
    for name in "abc":
        kube.create(CILIUM_ENDPOINTS, cep(name))
    sink = RecordingSink()
    async with running(make_source(kubeconfig), sink, [CILIUM_ENDPOINT]):
        await synced(sink, [CILIUM_ENDPOINT])
        await watching(kube, [CILIUM_ENDPOINTS])
        old_rv = kube.watch_requests(CILIUM_ENDPOINTS)[0].resource_version
        # While the client is disconnected: b is deleted, d created, and the history
        # that would let it catch up is compacted away.
        kube.drop_watches()
        kube.delete(CILIUM_ENDPOINTS, "b", "default")
        kube.create(CILIUM_ENDPOINTS, cep("d"))
        kube.compact()
        await wait_for(lambda: len(sink.of(CILIUM_ENDPOINT, "replace")) == 2, what="relist")
        await watching(kube, [CILIUM_ENDPOINTS])
        kube.create(CILIUM_ENDPOINTS, cep("e"))
        await wait_for(lambda: ("default", "e") in sink.names(CILIUM_ENDPOINT))

    assert sink.names(CILIUM_ENDPOINT) == {("default", n) for n in "acde"}
    # b went away through the relist's replace, not through a delete event.
    assert not sink.of(CILIUM_ENDPOINT, "delete")
    assert [op for op, _ in sink.of(CILIUM_ENDPOINT)] == [
        "replace", "synced", "replace", "upsert"]
    second = sink.of(CILIUM_ENDPOINT, "replace")[1][1]
    assert {o["metadata"]["name"] for o in second} == set("acd")
    watches = kube.watch_requests(CILIUM_ENDPOINTS)
    assert [w.resource_version for w in watches[:2]] == [old_rv, old_rv]  # → 410
    assert len(kube.list_requests(CILIUM_ENDPOINTS)) == 2
    assert int(watches[2].resource_version) > int(old_rv)


async def test_continue_token_expired_mid_list(kube: FakeKube, kubeconfig: Path) -> None:
    for i in range(10):
        kube.create(CILIUM_ENDPOINTS, cep(f"pod-{i}"))

    def compact_after_first_page(req: KubeRequest) -> None:
        if (not req.watch and "ciliumendpoints" in req.path and "continue" in req.query
                and not getattr(compact_after_first_page, "done", False)):
            compact_after_first_page.done = True  # type: ignore[attr-defined]
            kube.delete(CILIUM_ENDPOINTS, "pod-9", "default")
            kube.compact()

    kube.on_request = compact_after_first_page
    sink = RecordingSink()
    async with running(make_source(kubeconfig, page_size=4), sink, [CILIUM_ENDPOINT]):
        await synced(sink, [CILIUM_ENDPOINT])

    pages = kube.list_requests(CILIUM_ENDPOINTS)
    # first page, expired continuation, then one unpaginated list
    assert [r.query.get("limit") for r in pages] == ["4", "4", None]
    replaces = sink.of(CILIUM_ENDPOINT, "replace")
    assert len(replaces) == 1
    assert {o["metadata"]["name"] for o in replaces[0][1]} == {f"pod-{i}" for i in range(9)}


async def test_server_watch_timeout_rewatches_seamlessly(kube: FakeKube,
                                                         kubeconfig: Path) -> None:
    kube.create(CILIUM_ENDPOINTS, cep("a"))
    sink = RecordingSink()
    source = make_source(kubeconfig, watch_timeout_seconds=1)
    async with running(source, sink, [CILIUM_ENDPOINT]):
        await synced(sink, [CILIUM_ENDPOINT])
        await wait_for(lambda: len(kube.watch_requests(CILIUM_ENDPOINTS)) >= 2, timeout=4,
                       what="second watch after the server's timeout")
        await watching(kube, [CILIUM_ENDPOINTS])
        kube.create(CILIUM_ENDPOINTS, cep("b"))
        await wait_for(lambda: ("default", "b") in sink.names(CILIUM_ENDPOINT))

    watches = kube.watch_requests(CILIUM_ENDPOINTS)
    assert all(w.query["timeoutSeconds"] == "1" for w in watches)
    assert watches[0].resource_version == watches[1].resource_version
    assert watches[1].time - watches[0].time >= 0.9  # the server ended it, not an error
    assert len(kube.list_requests(CILIUM_ENDPOINTS)) == 1
    assert [op for op, _ in sink.of(CILIUM_ENDPOINT)] == ["replace", "synced", "upsert"]
    assert source.status()["CiliumEndpoint"].last_error is None


#: Retry delays on a fake clock: 1, 2, 4, 4, ... exactly.
STEPPED = BackoffPolicy(initial=1.0, maximum=4.0, jitter=0.0)


def woken(fake: FakeClock, seconds: float) -> None:
    """Advance ``fake`` by ``seconds``, which must wake exactly one sleeper (one reflector)."""
    assert fake.advance(seconds) == 1, f"nobody due after {seconds}s"


async def test_missing_crd_is_synced_empty(kube: FakeKube, kubeconfig: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="apiserver.sources.kubernetes")
    fake = FakeClock()
    sink = RecordingSink()
    source = make_source(kubeconfig, clock=fake.clock, backoff=STEPPED,
                         missing_recheck_interval=60)
    async with running(source, sink, [SERVICE_EXPORT, CILIUM_IDENTITY]):
        await synced(sink, [SERVICE_EXPORT, CILIUM_IDENTITY])
        assert source.status()["ServiceExport"].missing
        # Rechecked every 60 s of the clock, not sooner; logged once.
        for lists in (1, 2, 3):
            await fake.wait_for_sleepers(1)
            assert len(kube.list_requests(SERVICE_EXPORTS)) == lists
            assert fake.advance(59.9) == 0
            woken(fake, 0.1)
            await wait_for(lambda n=lists: len(kube.list_requests(SERVICE_EXPORTS)) > n)
        assert len([r for r in caplog.records if "not served" in r.getMessage()]) == 1
        assert "checking again every 60s" in caplog.text
        assert [op for op, _ in sink.of(SERVICE_EXPORT)] == ["replace", "synced"]
        # The CRD gets installed: picked up by the next recheck.
        await fake.wait_for_sleepers(1)
        kube.install(SERVICE_EXPORTS)
        export = kube.create(SERVICE_EXPORTS, named("svc-0", "ns-1"))
        woken(fake, 60)
        await wait_for(lambda: sink.names(SERVICE_EXPORT) == {("ns-1", "svc-0")})
        assert not source.status()["ServiceExport"].missing
        await watching(kube, [SERVICE_EXPORTS])
        # ...and when it is uninstalled again, its objects go away.  The watch ended
        # at once (no time passed) without an event: a failure, retried after 1 s.
        kube.uninstall(SERVICE_EXPORTS)
        await fake.wait_for_sleepers(1)
        assert fake.sleeps == [60, 60, 60, 60, STEPPED.initial]
        woken(fake, STEPPED.initial)
        await wait_for(lambda: source.status()["ServiceExport"].missing)

    assert [op for op, _ in sink.of(SERVICE_EXPORT)] == [
        "replace", "synced", "replace", "replace"]
    assert sink.of(SERVICE_EXPORT, "replace")[1][1] == [export]
    assert sink.state["ServiceExport"] == {}
    assert sink.synced_kinds.count("ServiceExport") == 1
    assert len([r for r in caplog.records if "not served" in r.getMessage()]) == 2


async def test_unauthorized_retries_with_backoff_and_never_syncs(kube: FakeKube,
                                                                 tmp_path: Path) -> None:
    config = kube.write_kubeconfig(tmp_path / "bad-kubeconfig", token="wrong")
    fake = FakeClock()
    sink = RecordingSink()
    source = make_source(config, clock=fake.clock, backoff=STEPPED)
    async with running(source, sink, [NAMESPACE]):
        # Each failed list waits its delay on the clock, not a moment less: 1, 2, 4, 4.
        for lists, delay in enumerate([1.0, 2.0, 4.0, 4.0], start=1):
            await fake.wait_for_sleepers(1)
            assert len(kube.list_requests(NAMESPACES)) == lists
            assert fake.sleeps[-1] == delay
            assert fake.advance(delay - 0.01) == 0
            woken(fake, 0.01)
            await wait_for(lambda n=lists: len(kube.list_requests(NAMESPACES)) > n)
        assert "401" in (source.status()["Namespace"].last_error or "")
    assert sink.calls == []


async def test_expired_first_watch_backs_off_before_relisting(kube: FakeKube,
                                                              kubeconfig: Path) -> None:
    """A list whose very first watch is already expired is relisted only after a retry
    delay: a server that compacts faster than we list cannot make us spin."""
    kube.create(CILIUM_ENDPOINTS, cep("a"))
    expired: list[KubeRequest] = []

    def compact_before_the_first_watch(req: KubeRequest) -> None:
        if req.watch and "ciliumendpoints" in req.path and not expired:
            expired.append(req)
            kube.create(CILIUM_ENDPOINTS, cep("b"))
            kube.compact()  # the list's resourceVersion is history now: 410

    kube.on_request = compact_before_the_first_watch
    fake = FakeClock()
    sink = RecordingSink()
    source = make_source(kubeconfig, clock=fake.clock, backoff=STEPPED)
    async with running(source, sink, [CILIUM_ENDPOINT]):
        await synced(sink, [CILIUM_ENDPOINT])
        await fake.wait_for_sleepers(1)
        assert fake.sleeps == [STEPPED.initial]
        assert len(kube.list_requests(CILIUM_ENDPOINTS)) == 1
        assert source.status()["CiliumEndpoint"].resource_version is None  # relist next
        woken(fake, STEPPED.initial)
        await wait_for(lambda: sink.names(CILIUM_ENDPOINT) == {("default", "a"),
                                                               ("default", "b")})
        await watching(kube, [CILIUM_ENDPOINTS])

    assert [op for op, _ in sink.of(CILIUM_ENDPOINT)] == ["replace", "synced", "replace"]
    assert len(kube.list_requests(CILIUM_ENDPOINTS)) == 2
    assert fake.sleeps == [STEPPED.initial]  # the second watch held


async def test_cancellation_leaves_no_tasks(kube: FakeKube, kubeconfig: Path) -> None:
    before = asyncio.all_tasks()
    sink = RecordingSink()
    task = asyncio.create_task(make_source(kubeconfig).run(sink, KINDS))
    await synced(sink)
    await watching(kube, [NAMESPACES, CILIUM_ENDPOINTS])
    assert len(asyncio.all_tasks() - before) > len(KINDS)  # run + one per kind
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Nothing of the client is left the moment run() has returned...
    left = asyncio.all_tasks() - before
    assert not [t for t in left if t.get_name().startswith("kube-")]
    assert not [t for t in left if "apiserver" in str(t.get_coro())]
    # ...and since it closed its connections, the fake server's handlers (which run in
    # this same event loop) wind down too, until not one task more than before remains.
    await wait_for(lambda: kube.watch_count() == 0, what="server-side watches closed")
    await wait_for(lambda: not asyncio.all_tasks() - before, timeout=2,
                   what=f"no tasks left: {asyncio.all_tasks() - before}")


async def test_default_kubeconfig_outside_cluster(kube: FakeKube, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    kube.write_kubeconfig(tmp_path / ".kube" / "config")
    kube.create(NAMESPACES, named("kube-system"))
    sink = RecordingSink()
    source = KubernetesSource(backoff=FAST_RETRY)
    async with running(source, sink, [NAMESPACE]):
        await synced(sink, [NAMESPACE])
    assert sink.names(NAMESPACE) == {("", "kube-system")}


async def test_no_config_at_all_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kubernetes_asyncio.config import ConfigException

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ConfigException):
        await KubernetesSource().run(RecordingSink(), [NAMESPACE])
    with pytest.raises(ConfigException):
        await KubernetesSource(kubeconfig=tmp_path / "nope").run(RecordingSink(), [NAMESPACE])


# -- label selectors ------------------------------------------------------------------

PROXY_LABEL = "service.kubernetes.io/service-proxy-name"
MANAGED_BY = "endpointslice.kubernetes.io/managed-by"
MESH_CONTROLLER = "endpointslice-mesh-controller.cilium.io"
K8S_CONTROLLER = "endpointslice-controller.k8s.io"


def labelled(name: str, namespace: str = "default", **labels: str) -> Obj:
    return {"metadata": {"name": name, "namespace": namespace, "labels": labels}}


def delivered_names(sink: RecordingSink, kind: Kind) -> set[str]:
    """Every name the sink was ever given for ``kind``, by any call."""
    names: set[str] = set()
    for op, payload in sink.of(kind):
        if op == "replace":
            names |= {o["metadata"]["name"] for o in payload}
        elif op == "upsert":
            names.add(payload["metadata"]["name"])
        elif op == "delete":
            names.add(payload[1])
    return names


def test_selector_helpers() -> None:
    assert service_proxy_selector("") == "!service.kubernetes.io/service-proxy-name"
    assert service_proxy_selector("other") == "service.kubernetes.io/service-proxy-name=other"
    assert ENDPOINTSLICE_SELECTOR == (
        "endpointslice.kubernetes.io/managed-by!=endpointslice-mesh-controller.cilium.io")
    assert default_label_selectors("") == {
        "Service": "!service.kubernetes.io/service-proxy-name",
        "EndpointSlice": ENDPOINTSLICE_SELECTOR}
    assert default_label_selectors("p")["Service"] == (
        "service.kubernetes.io/service-proxy-name=p")
    for bad in ("has space", "-x", "x" * 64, "a,b"):
        with pytest.raises(ValueError, match="service proxy name"):
            service_proxy_selector(bad)
    with pytest.raises(ValueError, match="unknown kinds"):
        KubernetesSource(label_selectors={"Services": "a=b"})


async def test_selectors_sent_on_every_request_of_configured_kinds(
        kube: FakeKube, kubeconfig: Path) -> None:
    for name in ("a", "b", "c"):
        kube.create(SERVICES, labelled(name, app="web" if name != "b" else "db"))
    kube.create(CILIUM_ENDPOINTS, cep("pod"))
    selectors = {"Service": "app=web", "EndpointSlice": ENDPOINTSLICE_SELECTOR}
    sink = RecordingSink()
    kinds = [SERVICE, ENDPOINT_SLICE, CILIUM_ENDPOINT, NAMESPACE]
    async with running(make_source(kubeconfig, label_selectors=selectors, page_size=1),
                       sink, kinds):
        await synced(sink, kinds)
        await watching(kube, [SERVICES, ENDPOINT_SLICES, CILIUM_ENDPOINTS, NAMESPACES])

    # Two pages of Services (the server filtered: two of three match), every page with it.
    assert [r.label_selector for r in kube.list_requests(SERVICES)] == ["app=web"] * 2
    assert [r.label_selector for r in kube.watch_requests(SERVICES)] == ["app=web"]
    slices = kube.list_requests(ENDPOINT_SLICES) + kube.watch_requests(ENDPOINT_SLICES)
    assert len(slices) == 2
    assert {r.label_selector for r in slices} == {ENDPOINTSLICE_SELECTOR}
    for resource in (CILIUM_ENDPOINTS, NAMESPACES):
        requests = kube.list_requests(resource) + kube.watch_requests(resource)
        assert requests and all("labelSelector" not in r.query for r in requests)
    assert delivered_names(sink, SERVICE) == {"a", "c"}


async def test_default_selector_hides_services_of_other_proxies(
        kube: FakeKube, kubeconfig: Path) -> None:
    kube.create(SERVICES, labelled("plain"))
    kube.create(SERVICES, labelled("other", **{PROXY_LABEL: "other"}))
    sink = RecordingSink()
    source = make_source(kubeconfig, label_selectors=default_label_selectors(""))
    async with running(source, sink, [SERVICE]):
        await synced(sink, [SERVICE])
        await watching(kube, [SERVICES])
        kube.create(SERVICES, labelled("other-2", **{PROXY_LABEL: "other"}))
        kube.create(SERVICES, labelled("sentinel"))  # after other-2 in the same stream
        await wait_for(lambda: ("default", "sentinel") in sink.names(SERVICE), what="sentinel")

    assert sink.of(SERVICE)[0][0] == "replace"
    assert {o["metadata"]["name"] for o in sink.of(SERVICE)[0][1]} == {"plain"}
    assert delivered_names(sink, SERVICE) == {"plain", "sentinel"}


async def test_service_proxy_selector_selects_only_its_services(
        kube: FakeKube, kubeconfig: Path) -> None:
    kube.create(SERVICES, labelled("plain"))
    kube.create(SERVICES, labelled("mine", **{PROXY_LABEL: "other"}))
    kube.create(SERVICES, labelled("theirs", **{PROXY_LABEL: "third"}))
    sink = RecordingSink()
    source = make_source(kubeconfig, label_selectors=default_label_selectors("other"))
    async with running(source, sink, [SERVICE]):
        await synced(sink, [SERVICE])
        await watching(kube, [SERVICES])
        kube.create(SERVICES, labelled("plain-2"))
        kube.create(SERVICES, labelled("sentinel", **{PROXY_LABEL: "other"}))
        await wait_for(lambda: ("default", "sentinel") in sink.names(SERVICE), what="sentinel")

    assert {o["metadata"]["name"] for o in sink.of(SERVICE)[0][1]} == {"mine"}
    assert delivered_names(sink, SERVICE) == {"mine", "sentinel"}


async def test_mirrored_endpointslices_never_delivered(kube: FakeKube, kubeconfig: Path) -> None:
    kube.create(ENDPOINT_SLICES, labelled("local", **{MANAGED_BY: K8S_CONTROLLER}))
    kube.create(ENDPOINT_SLICES, labelled("unlabelled"))  # "!=" matches a missing label
    kube.create(ENDPOINT_SLICES, labelled("mirrored", **{MANAGED_BY: MESH_CONTROLLER}))
    sink = RecordingSink()
    source = make_source(kubeconfig, label_selectors=default_label_selectors(""))
    async with running(source, sink, [ENDPOINT_SLICE]):
        await synced(sink, [ENDPOINT_SLICE])
        await watching(kube, [ENDPOINT_SLICES])
        kube.create(ENDPOINT_SLICES, labelled("mirrored-2", **{MANAGED_BY: MESH_CONTROLLER}))
        kube.create(ENDPOINT_SLICES, labelled("sentinel"))
        await wait_for(lambda: ("default", "sentinel") in sink.names(ENDPOINT_SLICE),
                       what="sentinel")

    assert {o["metadata"]["name"] for o in sink.of(ENDPOINT_SLICE)[0][1]} == {"local",
                                                                              "unlabelled"}
    assert delivered_names(sink, ENDPOINT_SLICE) == {"local", "unlabelled", "sentinel"}


async def test_relabelling_out_of_and_into_the_selection(kube: FakeKube,
                                                         kubeconfig: Path) -> None:
    kube.create(SERVICES, labelled("web"))
    kube.create(ENDPOINT_SLICES, labelled("web-abc"))
    sink = RecordingSink()
    source = make_source(kubeconfig, label_selectors=default_label_selectors(""))
    async with running(source, sink, [SERVICE, ENDPOINT_SLICE]):
        await synced(sink, [SERVICE, ENDPOINT_SLICE])
        await watching(kube, [SERVICES, ENDPOINT_SLICES])
        # Claimed by another proxy / turned into a mirrored slice: gone for us.
        kube.update(SERVICES, labelled("web", **{PROXY_LABEL: "other"}))
        kube.update(ENDPOINT_SLICES, labelled("web-abc", **{MANAGED_BY: MESH_CONTROLLER}))
        await wait_for(lambda: not sink.names(SERVICE) and not sink.names(ENDPOINT_SLICE),
                       what="deletes")
        # ...and back.
        back = kube.update(SERVICES, labelled("web"))
        back_slice = kube.update(ENDPOINT_SLICES, labelled("web-abc", **{MANAGED_BY: "x"}))
        await wait_for(lambda: sink.names(SERVICE) and sink.names(ENDPOINT_SLICE),
                       what="upserts")

    assert [op for op, _ in sink.of(SERVICE)] == ["replace", "synced", "delete", "upsert"]
    assert sink.of(SERVICE, "delete")[0][1] == ("default", "web")
    assert sink.of(SERVICE, "upsert")[0][1] == back
    assert [op for op, _ in sink.of(ENDPOINT_SLICE)] == ["replace", "synced", "delete",
                                                          "upsert"]
    assert sink.of(ENDPOINT_SLICE, "upsert")[0][1] == back_slice
    # The watch followed the changes; nothing needed a relist.
    assert len(kube.list_requests(SERVICES)) == len(kube.list_requests(ENDPOINT_SLICES)) == 1


async def test_invalid_selector_is_retried_and_never_syncs(kube: FakeKube,
                                                           kubeconfig: Path) -> None:
    sink = RecordingSink()
    source = make_source(kubeconfig, label_selectors={"Namespace": "a b"})
    async with running(source, sink, [NAMESPACE, CILIUM_ENDPOINT]):
        await synced(sink, [CILIUM_ENDPOINT])  # the other kind is not held up
        await wait_for(lambda: len(kube.list_requests(NAMESPACES)) >= 3, what="retries")
        assert "400" in (source.status()["Namespace"].last_error or "")
    assert not sink.of(NAMESPACE)
    assert {r.label_selector for r in kube.list_requests(NAMESPACES)} == {"a b"}


# -- client-side rate limit -----------------------------------------------------------

class InstantClock:
    """Time that only moves when the test sets ``now`` or, if ``sleeping_advances``, by
    each sleep; every sleep is recorded and returns at once (unlike
    :class:`harness.fakeclock.FakeClock`'s, which park until the test advances time:
    here reservations pile up while time stands still)."""

    def __init__(self, *, sleeping_advances: bool) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []
        self.sleeping_advances = sleeping_advances

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        if self.sleeping_advances:
            self.now += delay
        await asyncio.sleep(0)

    @property
    def clock(self) -> Clock:
        return Clock(self.monotonic, self.sleep)


async def test_token_bucket_burst_then_qps() -> None:
    fake = InstantClock(sleeping_advances=True)
    bucket = TokenBucket(qps=10, burst=3, clock=fake.clock)
    assert [await bucket.wait() for _ in range(3)] == [0.0, 0.0, 0.0]  # the burst
    assert fake.sleeps == []
    assert [await bucket.wait() for _ in range(3)] == pytest.approx([0.1, 0.1, 0.1])
    assert fake.sleeps == pytest.approx([0.1, 0.1, 0.1])
    # Idle for a long time: refilled up to the burst, not beyond.
    fake.now += 60
    assert [await bucket.wait() for _ in range(4)] == pytest.approx([0, 0, 0, 0.1])
    # A partial refill: 0.25 s at 10 qps is 2.5 tokens.
    fake.now += 0.25
    assert [await bucket.wait() for _ in range(3)] == pytest.approx([0, 0, 0.05])


async def test_token_bucket_waiters_queue_in_order() -> None:
    """Concurrent callers reserve successive tokens, as x/time/rate's reservations do."""
    fake = InstantClock(sleeping_advances=False)
    bucket = TokenBucket(qps=4, burst=1, clock=fake.clock)
    waited = await asyncio.gather(*(bucket.wait() for _ in range(5)))
    assert waited == pytest.approx([0, 0.25, 0.5, 0.75, 1.0])


@pytest.mark.parametrize("qps", [0, -1])
async def test_token_bucket_unlimited(qps: float) -> None:
    fake = InstantClock(sleeping_advances=False)
    bucket = TokenBucket(qps=qps, burst=0, clock=fake.clock)
    assert {await bucket.wait() for _ in range(1000)} == {0.0}
    assert fake.sleeps == []


def test_token_bucket_needs_a_burst() -> None:
    with pytest.raises(ValueError, match="burst"):
        TokenBucket(qps=5, burst=0)
    with pytest.raises(ValueError, match="burst"):
        KubernetesSource(client_qps=5, client_burst=0)


async def test_rate_limit_shared_per_request_not_per_event(kube: FakeKube,
                                                           kubeconfig: Path) -> None:
    for i in range(3):
        kube.create(CILIUM_ENDPOINTS, cep(f"pod-{i}"))
    # Time stands still, so every token past the burst is a reservation further out:
    # the k-th one over the burst waits k/qps, whichever reflector takes it.  The retry
    # backoff sleeps on the same clock: exactly 1 s, told apart from the rate limit.
    fake = InstantClock(sleeping_advances=False)
    retry = BackoffPolicy(initial=1.0, maximum=1.0, jitter=0.0)
    source = make_source(kubeconfig, page_size=1, client_qps=20, client_burst=2,
                         clock=fake.clock, backoff=retry)
    sink = RecordingSink()
    async with running(source, sink, [CILIUM_ENDPOINT, NAMESPACE]):
        await synced(sink, [CILIUM_ENDPOINT, NAMESPACE])
        await watching(kube, [CILIUM_ENDPOINTS, NAMESPACES])
        # 3 CiliumEndpoint pages + 1 watch, 1 Namespace page + 1 watch: 6 requests, one
        # bucket of 2, so 4 waits, of 1..4 twentieths of a second.
        assert len(kube.requests) == 6
        assert sorted(fake.sleeps) == pytest.approx([0.05, 0.1, 0.15, 0.2])
        # Watch events are not requests.
        for i in range(5):
            kube.create(CILIUM_ENDPOINTS, cep(f"new-{i}"))
            kube.create(NAMESPACES, named(f"ns-{i}"))
        await wait_for(lambda: len(sink.names(CILIUM_ENDPOINT)) == 8
                       and len(sink.names(NAMESPACE)) == 5, what="events")
        assert len(fake.sleeps) == 4
        # A new watch is (each after the retry delay of its broken stream).
        kube.drop_watches()
        await wait_for(lambda: len(kube.requests) == 8, what="rewatches")
        await watching(kube, [CILIUM_ENDPOINTS, NAMESPACES])
        throttled = sorted(s for s in fake.sleeps if s != retry.initial)
        assert throttled == pytest.approx([0.05 * i for i in range(1, 7)])
        assert fake.sleeps.count(retry.initial) == 2


# -- --k8s-api-server ---------------------------------------------------------------

def closed_port() -> int:
    """A loopback port nothing listens on (connections to it are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def no_ambient_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Not in a cluster; ``~/.kube/config`` exists but points at a closed port, so a
    source that fell back to it could not sync.  Returns the (absent) service account
    directory to pass to the source."""
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    FakeKube().write_kubeconfig(tmp_path / "home" / ".kube" / "config",
                                server=f"http://127.0.0.1:{closed_port()}")
    return tmp_path / "serviceaccount"


def write_service_account(directory: Path, *, token: str, ca: Path | None = None) -> None:
    """What kubelet mounts into a pod: ``token`` and (here optionally) ``ca.crt``."""
    directory.mkdir()
    (directory / "token").write_text(token)
    if ca is not None:
        (directory / "ca.crt").write_bytes(ca.read_bytes())


async def test_api_server_overrides_the_kubeconfig(kube: FakeKube, tmp_path: Path) -> None:
    config = kube.write_kubeconfig(tmp_path / "kubeconfig",
                                   server=f"http://127.0.0.1:{closed_port()}")
    kube.create(NAMESPACES, named("kube-system"))
    # As written, the kubeconfig leads nowhere...
    sink = RecordingSink()
    source = make_source(config)
    async with running(source, sink, [NAMESPACE]):
        await wait_for(lambda: "Namespace" in source.status()
                       and source.status()["Namespace"].last_error, what="an error")
    assert sink.calls == [] and kube.requests == []
    # ...but its credentials and context with the given server work.
    sink = RecordingSink()
    async with running(make_source(config, api_server=kube.url + "/"), sink, [NAMESPACE]):
        await synced(sink, [NAMESPACE])
    assert sink.names(NAMESPACE) == {("", "kube-system")}


async def test_api_server_alone_has_no_credentials(kube: FakeKube,
                                                   no_ambient_config: Path) -> None:
    sink = RecordingSink()
    source = KubernetesSource(api_server=kube.url, service_account_dir=no_ambient_config,
                              backoff=FAST_RETRY)
    async with running(source, sink, [NAMESPACE]):
        # Reached (so not the closed port of ~/.kube/config), but sent no token.
        await wait_for(lambda: len(kube.list_requests(NAMESPACES)) >= 2, what="requests")
        assert "401" in (source.status()["Namespace"].last_error or "")
    assert sink.calls == []

    async with FakeKube(token=None) as open_kube:
        open_kube.create(NAMESPACES, named("default"))
        # A URL without a scheme and no CA configured: plain HTTP, as client-go defaults.
        for url in (open_kube.url, open_kube.url.removeprefix("http://")):
            sink = RecordingSink()
            source = KubernetesSource(api_server=url, service_account_dir=no_ambient_config)
            async with running(source, sink, [NAMESPACE]):
                await synced(sink, [NAMESPACE])
            assert sink.names(NAMESPACE) == {("", "default")}, url


async def test_api_server_alone_uses_the_service_account_token(
        kube: FakeKube, no_ambient_config: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="apiserver.sources.kubernetes")
    assert kube.token is not None
    write_service_account(no_ambient_config, token=f"{kube.token}\n")  # kubelet's may end so
    kube.create(NAMESPACES, named("default"))
    sink = RecordingSink()
    source = KubernetesSource(api_server=kube.url, service_account_dir=no_ambient_config)
    async with running(source, sink, [NAMESPACE]):
        await synced(sink, [NAMESPACE])
    assert sink.names(NAMESPACE) == {("", "default")}
    assert f"using --k8s-api-server with the token of {no_ambient_config}" in caplog.text


async def test_api_server_overrides_the_in_cluster_config(
        kube: FakeKube, no_ambient_config: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="apiserver.sources.kubernetes")
    # In a pod whose KUBERNETES_SERVICE_HOST/PORT lead nowhere: the service account's
    # token (which the fake checks) and CA are used, with the given server.
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(closed_port()))
    assert kube.token is not None
    write_service_account(no_ambient_config, token=kube.token, ca=pki.ca_file)
    kube.create(NAMESPACES, named("default"))
    sink = RecordingSink()
    source = KubernetesSource(api_server=kube.url, service_account_dir=no_ambient_config)
    async with running(source, sink, [NAMESPACE]):
        await synced(sink, [NAMESPACE])
    assert sink.names(NAMESPACE) == {("", "default")}
    # The in-cluster loader itself, not the token-only fallback.
    assert f"using the in-cluster service account ({kube.url})" in caplog.text
