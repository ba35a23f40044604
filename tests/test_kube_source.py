"""KubernetesSource against the in-process fake API server (``harness.fake_kube``).

The source connects through a kubeconfig written into ``tmp_path`` that points at the fake
server over HTTP with a bearer token; nothing in the source is patched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
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

from apiserver.sources import (
    CILIUM_ENDPOINT,
    CILIUM_IDENTITY,
    KINDS,
    NAMESPACE,
    SERVICE_EXPORT,
    Kind,
    Obj,
    object_key,
)
from apiserver.sources.kubernetes import KubernetesSource

Key = tuple[str, str]


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
    kw.setdefault("backoff_initial", 0.02)
    kw.setdefault("backoff_max", 0.1)
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


async def test_missing_crd_is_synced_empty(kube: FakeKube, kubeconfig: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="apiserver.sources.kubernetes")
    sink = RecordingSink()
    source = make_source(kubeconfig, missing_recheck_interval=0.1)
    async with running(source, sink, [SERVICE_EXPORT, CILIUM_IDENTITY]):
        await synced(sink, [SERVICE_EXPORT, CILIUM_IDENTITY])
        assert source.status()["ServiceExport"].missing
        # Rechecked a few times, logged once.
        await wait_for(lambda: len(kube.list_requests(SERVICE_EXPORTS)) >= 3)
        assert len([r for r in caplog.records if "not served" in r.getMessage()]) == 1
        assert [op for op, _ in sink.of(SERVICE_EXPORT)] == ["replace", "synced"]
        # The CRD gets installed: picked up by the next recheck.
        kube.install(SERVICE_EXPORTS)
        export = kube.create(SERVICE_EXPORTS, named("svc-0", "ns-1"))
        await wait_for(lambda: sink.names(SERVICE_EXPORT) == {("ns-1", "svc-0")})
        assert not source.status()["ServiceExport"].missing
        await watching(kube, [SERVICE_EXPORTS])
        # ...and when it is uninstalled again, its objects go away.
        kube.uninstall(SERVICE_EXPORTS)
        await wait_for(lambda: source.status()["ServiceExport"].missing)

    assert [op for op, _ in sink.of(SERVICE_EXPORT)] == [
        "replace", "synced", "replace", "replace"]
    assert sink.of(SERVICE_EXPORT, "replace")[1][1] == [export]
    assert sink.state["ServiceExport"] == {}
    assert sink.synced_kinds.count("ServiceExport") == 1
    assert len([r for r in caplog.records if "not served" in r.getMessage()]) == 2


async def test_unauthorized_retries_and_never_syncs(kube: FakeKube, tmp_path: Path) -> None:
    config = kube.write_kubeconfig(tmp_path / "bad-kubeconfig", token="wrong")
    sink = RecordingSink()
    source = make_source(config)
    async with running(source, sink, [NAMESPACE]):
        await wait_for(lambda: len(kube.list_requests(NAMESPACES)) >= 3, what="retries")
        assert "401" in (source.status()["Namespace"].last_error or "")
    assert sink.calls == []


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
    source = KubernetesSource(backoff_initial=0.02, backoff_max=0.1)
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
