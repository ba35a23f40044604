"""``labelSelector`` in the fake API server (``harness.fake_kube``): the parser and matcher
against apimachinery's semantics, then list and watch over HTTP.

The expectations are the real API server's (``k8s.io/apimachinery/pkg/labels``): the same
selectors are valid, select the same labels, and a watch turns relabelling into ADDED /
DELETED the way the watch cache does.  The Kubernetes source's tests rely on all of it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from harness.fake_kube import SERVICES, FakeKube, LabelSelector, SelectorError

SELECTS = [
    # (selector, labels, selected)
    ("", {}, True),
    ("   ", {"a": "1"}, True),
    ("app=web", {"app": "web"}, True),
    ("app=web", {"app": "db"}, False),
    ("app=web", {}, False),
    ("app==web", {"app": "web"}, True),
    ("app = web", {"app": "web"}, True),  # whitespace between tokens is skipped
    ("app!=web", {"app": "db"}, True),
    ("app!=web", {"app": "web"}, False),
    ("app!=web", {}, True),  # negative requirements match an absent label
    ("app", {"app": ""}, True),
    ("app", {"other": "x"}, False),
    ("!app", {"other": "x"}, True),
    ("!app", {"app": ""}, False),
    ("env in (prod,staging)", {"env": "staging"}, True),
    ("env in (prod, staging)", {"env": "dev"}, False),
    ("env in (prod)", {}, False),
    ("env notin (prod,staging)", {"env": "dev"}, True),
    ("env notin (prod,staging)", {"env": "prod"}, False),
    ("env notin (prod)", {}, True),
    ("env in ()", {"env": ""}, True),  # "()" is the set of the empty value
    ("env in ()", {"env": "x"}, False),
    ("env in (,prod)", {"env": ""}, True),  # an empty item is the empty value
    ("env in (prod,)", {"env": ""}, True),
    ("env in (a,,b)", {"env": ""}, True),
    ("env=", {"env": ""}, True),
    ("env=", {"env": "x"}, False),
    ("in=1", {"in": "1"}, True),  # a keyword where a key or value goes is an identifier
    ("k in (in,notin)", {"k": "notin"}, True),
    ("n>5", {"n": "6"}, True),
    ("n>5", {"n": "5"}, False),
    ("n>5", {"n": "x"}, False),
    ("n>5", {}, False),
    ("n<5", {"n": "4"}, True),
    ("a=1,b", {"a": "1", "b": "2"}, True),  # comma is AND
    ("a=1,b", {"a": "1"}, False),
    ("a=1,!b,c notin (x)", {"a": "1", "c": "y"}, True),
    ("example.com/app=web", {"example.com/app": "web"}, True),
    ("service.kubernetes.io/service-proxy-name", {"service.kubernetes.io/service-proxy-name": ""},
     True),
    ("!service.kubernetes.io/service-proxy-name", {}, True),
    ("endpointslice.kubernetes.io/managed-by!=endpointslice-mesh-controller.cilium.io",
     {"endpointslice.kubernetes.io/managed-by": "endpointslice-mesh-controller.cilium.io"},
     False),
    ("endpointslice.kubernetes.io/managed-by!=endpointslice-mesh-controller.cilium.io",
     {"endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}, True),
]

INVALID = [
    "a b",  # two identifiers: an operator was expected
    "=v",  # no key
    ",",
    "a,",  # an identifier must follow ","
    "a=1,,b",
    "!a=1",  # "!" takes no value
    "!",
    "a in (x",
    "a in x",
    "a in (x y)",
    "a notin",
    "a=b c",
    "a=(b)",
    "n>x",  # ">" / "<" need an integer
    "n>",
    "n<-1",  # an integer, but not a valid label value
    "-a",  # a name must start and end with an alphanumeric character
    "a-=b",
    "a/b/c",  # at most one prefix
    "/a",  # an empty prefix
    "Example.com/a",  # the prefix is a lowercase DNS subdomain
    "a" * 64,  # names and values are at most 63 characters
    "a=" + "v" * 64,
    "a=-v",
    "a=v!",
]


@pytest.mark.parametrize(("selector", "labels", "selected"), SELECTS)
def test_selector_semantics(selector: str, labels: dict[str, str], selected: bool) -> None:
    assert LabelSelector.parse(selector).matches({"metadata": {"labels": labels}}) is selected


@pytest.mark.parametrize("selector", INVALID)
def test_invalid_selector(selector: str) -> None:
    with pytest.raises(SelectorError):
        LabelSelector.parse(selector)


def test_limits_are_inclusive() -> None:
    """63 characters is still valid, as is a 253-character prefix."""
    prefix = ".".join(["a" * 63] * 4)[:253].rstrip(".")
    assert len(prefix) == 253
    selector = LabelSelector.parse(f"{prefix}/{'k' * 63}={'v' * 63}")
    assert selector.matches({"metadata": {"labels": {f"{prefix}/{'k' * 63}": "v" * 63}}})


def svc(name: str, **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "default", "labels": labels}}


@pytest.fixture
async def kube() -> AsyncIterator[FakeKube]:
    async with FakeKube(token=None) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def get_json(http: aiohttp.ClientSession, url: str, **params: str) -> tuple[int, Any]:
    async with http.get(url, params=params) as resp:
        return resp.status, await resp.json()


async def test_list_filters_and_pages_by_selector(kube: FakeKube,
                                                  http: aiohttp.ClientSession) -> None:
    for name, labels in [("a", {"app": "web"}), ("b", {"app": "db"}), ("c", {"app": "web"}),
                         ("d", {}), ("e", {"app": "web"})]:
        kube.create(SERVICES, svc(name, **labels))
    url = f"{kube.url}/api/v1/services"
    status, body = await get_json(http, url, labelSelector="app=web")
    assert status == 200
    assert [o["metadata"]["name"] for o in body["items"]] == ["a", "c", "e"]
    status, body = await get_json(http, url, labelSelector="app!=web")
    assert [o["metadata"]["name"] for o in body["items"]] == ["b", "d"]

    # Pages hold `limit` matching objects; no remainingItemCount under a selector.
    names: list[str] = []
    params = {"labelSelector": "app=web", "limit": "2"}
    status, body = await get_json(http, url, **params)
    assert "remainingItemCount" not in body["metadata"]
    names += [o["metadata"]["name"] for o in body["items"]]
    status, body = await get_json(http, url, **params, **{"continue": body["metadata"]["continue"]})
    names += [o["metadata"]["name"] for o in body["items"]]
    assert names == ["a", "c", "e"]
    assert "continue" not in body["metadata"]
    # ...while without one it is counted.
    status, body = await get_json(http, url, limit="2")
    assert body["metadata"]["remainingItemCount"] == 3

    assert kube.list_requests(SERVICES)[0].label_selector == "app=web"


async def test_pages_follow_etcd_key_order_from_one_snapshot(
        kube: FakeKube, http: aiohttp.ClientSession) -> None:
    # etcd orders "ns-b/x" before "ns/a" ('-' < '/'): so do the pages, as the real server.
    objects = [("ns", "a"), ("ns-b", "x"), ("ns", "b"), ("ns-b", "y"), ("ns", "c")]
    for namespace, name in objects:
        kube.create(SERVICES, {"metadata": {"name": name, "namespace": namespace}})
    url = f"{kube.url}/api/v1/services"
    status, body = await get_json(http, url, limit="2")
    assert status == 200 and body["metadata"]["remainingItemCount"] == 3
    seen = [(o["metadata"]["namespace"], o["metadata"]["name"]) for o in body["items"]]
    # Written between pages: later pages still show the first page's snapshot.
    kube.delete(SERVICES, "a", "ns")
    kube.create(SERVICES, {"metadata": {"name": "z", "namespace": "ns-b"}})
    while "continue" in body["metadata"]:
        status, body = await get_json(http, url, limit="2",
                                      **{"continue": body["metadata"]["continue"]})
        seen += [(o["metadata"]["namespace"], o["metadata"]["name"]) for o in body["items"]]
    assert seen == sorted(objects, key=lambda k: f"{k[0]}/{k[1]}")
    # A namespaced list counts only its namespace's remaining objects.
    status, body = await get_json(http, f"{kube.url}/api/v1/namespaces/ns-b/services",
                                  limit="1")
    assert [o["metadata"]["name"] for o in body["items"]] == ["x"]
    assert body["metadata"]["remainingItemCount"] == 2


@pytest.mark.parametrize("watch", [False, True])
async def test_invalid_selector_is_bad_request(kube: FakeKube, http: aiohttp.ClientSession,
                                               watch: bool) -> None:
    params = {"labelSelector": "app in (web"}
    if watch:
        params |= {"watch": "true", "resourceVersion": str(kube.resource_version)}
    status, body = await get_json(http, f"{kube.url}/api/v1/services", **params)
    assert status == 400
    assert body["kind"] == "Status" and body["reason"] == "BadRequest" and body["code"] == 400
    assert "unable to parse requirement" in body["message"]
    assert kube.watch_count() == 0


def relabel_sequence(kube: FakeKube) -> None:
    """Changes of every kind against the selector ``app=web``, ending with a matching
    sentinel so a reader knows every earlier event has been sent."""
    kube.create(SERVICES, svc("hidden", app="db"))  # never matches: nothing
    kube.create(SERVICES, svc("web", app="web"))  # ADDED
    kube.update(SERVICES, {**svc("web", app="web"), "spec": {"x": 1}})  # MODIFIED
    kube.update(SERVICES, svc("web", app="db"))  # stops matching: DELETED (previous state)
    kube.update(SERVICES, svc("hidden", app="other"))  # matches neither: nothing
    kube.update(SERVICES, svc("web", app="web"))  # starts matching: ADDED
    kube.delete(SERVICES, "hidden", "default")  # did not match: nothing
    kube.delete(SERVICES, "web", "default")  # DELETED
    kube.create(SERVICES, svc("sentinel", app="web"))  # ADDED


EXPECTED_EVENTS = [("ADDED", "web", {"app": "web"}), ("MODIFIED", "web", {"app": "web"}),
                   ("DELETED", "web", {"app": "web"}), ("ADDED", "web", {"app": "web"}),
                   ("DELETED", "web", {"app": "web"}), ("ADDED", "sentinel", {"app": "web"})]


async def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def read_until_sentinel(resp: aiohttp.ClientResponse) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    while not events or events[-1]["object"]["metadata"].get("name") != "sentinel":
        line = await resp.content.readline()
        assert line, f"stream ended after {events}"
        events.append(json.loads(line))
    return events


@pytest.mark.parametrize("replay", [False, True])
async def test_watch_turns_relabelling_into_added_and_deleted(
        kube: FakeKube, http: aiohttp.ClientSession, replay: bool) -> None:
    start_rv = kube.resource_version
    if replay:  # every change before the watch: served from the history
        relabel_sequence(kube)
    params = {"watch": "true", "resourceVersion": str(start_rv), "labelSelector": "app=web"}
    async with http.get(f"{kube.url}/api/v1/services", params=params) as resp:
        assert resp.status == 200
        if not replay:  # every change live, once the watch is registered
            await wait_for(lambda: kube.watch_count(SERVICES) == 1)
            relabel_sequence(kube)
        events = await read_until_sentinel(resp)

    got = [(e["type"], e["object"]["metadata"]["name"], e["object"]["metadata"]["labels"])
           for e in events]
    assert got == EXPECTED_EVENTS
    # The DELETED sent for "stops matching" carries the previous state at the change's
    # revision: strictly increasing resourceVersions, like every other event.
    rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert rvs == sorted(rvs) and len(set(rvs)) == len(rvs)
    assert events[2]["object"]["spec"] == {"x": 1}
