# ruff: noqa: E501  (the Prometheus exposition lines of METRICS are as a scrape gives them)
"""The live view without a browser: the snapshot from canned answers, the metrics it
reads, the HTTP headers on every route, and where it binds by default."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json

from aiohttp.test_utils import TestClient, TestServer

from clustermesh_tools.clusters.targets import Target
from clustermesh_tools.webview.collect import Collector, observe
from clustermesh_tools.webview.promtext import parse_metrics
from clustermesh_tools.webview.server import CSP, is_loopback, make_app, parse_listen, serve
from clustermesh_tools.webview.snapshot import SCHEMA, Observation, build_snapshot
from kvstoremesh.snapshot import LEADER, STANDBY, Leadership

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
METRICS = """\
# TYPE cilium_kvstoremesh_ready gauge
cilium_kvstoremesh_ready 1.0
# TYPE cilium_kvstoremesh_propagation_lag_seconds histogram
cilium_kvstoremesh_propagation_lag_seconds_bucket{le="0.005",target_cluster="cluster2"} 90.0
cilium_kvstoremesh_propagation_lag_seconds_bucket{le="0.05",target_cluster="cluster2"} 99.0
cilium_kvstoremesh_propagation_lag_seconds_bucket{le="+Inf",target_cluster="cluster2"} 100.0
cilium_kvstoremesh_propagation_lag_seconds_count{target_cluster="cluster2"} 100.0
cilium_kvstoremesh_propagation_lag_seconds_sum{target_cluster="cluster2"} 0.5
# TYPE cilium_kvstoremesh_rejected_entries_total counter
cilium_kvstoremesh_rejected_entries_total{reason="invalid-ip",resource="ipcache",target_cluster="cluster2"} 3.0
# TYPE cilium_kvstoremesh_remote_heartbeat_age_seconds gauge
cilium_kvstoremesh_remote_heartbeat_age_seconds{target_cluster="cluster2"} 4.5
# TYPE cilium_kvstoremesh_mesh_problems gauge
cilium_kvstoremesh_mesh_problems{kind="duplicate-cluster-id",target_cluster="cluster3"} 1.0
# TYPE cilium_kvstoremesh_certificate_not_after_timestamp_seconds gauge
cilium_kvstoremesh_certificate_not_after_timestamp_seconds{role="client",subject="remote",target_cluster="cluster2"} 1767484800.0
cilium_kvstoremesh_certificate_not_after_timestamp_seconds{role="ca",subject="ca",target_cluster="cluster1"} 2111672780.0
"""


def _model(name: str, *, ready: bool = True) -> dict:
    return {"name": name, "ready": ready, "connected": ready,
            "status": "ready" if ready else "remote down", "num-nodes": 3,
            "num-endpoints": 8, "num-identities": 2, "num-shared-services": 1,
            "num-endpointslices": 1, "num-failures": 0 if ready else 2}


def _leader() -> Leadership:
    return Leadership(LEADER, "vm", 1, "vm", 1)


def _target(name: str, **kw: object) -> Target:
    others = [c for c in ("cluster1", "cluster2", "cluster3") if c != name]
    return Target(name=name, api=f"127.0.0.1:{10 + int(name[-1])}", configured=others,
                  **kw)


def _snapshot(*observations: Observation) -> dict:
    return build_snapshot(list(observations), now=NOW, refresh_seconds=2.0).to_json()


def _cells(snap: dict) -> dict[tuple[str, str], dict]:
    return {(c["source"], c["cachedIn"]): c for c in snap["cells"]}


def test_matrix_rows_are_sources_columns_cache_in_and_an_unreachable_column() -> None:
    c1 = Observation(_target("cluster1", metrics={"kvstoremesh": "http://127.0.0.1:9/metrics"}),
                     "127.0.0.1:11", [_model("cluster2", ready=False), _model("cluster3")],
                     _leader(), "http://127.0.0.1:9/metrics", parse_metrics(METRICS))
    c2 = Observation(_target("cluster2"), None, None, None, None, None)
    c3 = Observation(_target("cluster3"), "127.0.0.1:13", [_model("cluster1"),
                                                            _model("cluster2")],
                     _leader(), None, None)
    snap = _snapshot(c1, c2, c3)
    cells = _cells(snap)
    assert snap["schema"] == SCHEMA and snap["rows"] == ["cluster1", "cluster2", "cluster3"]
    assert [c["name"] for c in snap["columns"]] == snap["rows"]
    # (cluster2 cached in cluster1) is cluster1's model for cluster2, with cluster1's metrics.
    cell = cells[("cluster2", "cluster1")]
    assert cell["state"] == "not-ready" and "remote down" in cell["detail"]
    assert cell["counts"]["failures"] == 2
    assert cell["lag"] == {"count": 100, "meanSeconds": 0.005, "p99Seconds": 0.05}
    assert cell["rejections"] == {"invalid-ip": 3} and cell["heartbeatAgeSeconds"] == 4.5
    assert cell["sources"] == ["cluster1's KVStoreMesh status API 127.0.0.1:11, "
                               "GET /v1/cluster: the model of cluster2",
                               "metrics http://127.0.0.1:9/metrics"]
    assert cells[("cluster3", "cluster1")]["state"] == "ready"
    assert cells[("cluster3", "cluster1")]["rejections"] == {}
    # cluster2's API does not answer: its column, the diagonal included, is unreachable.
    assert snap["columns"][1]["state"] == "unreachable"
    assert {cells[(s, "cluster2")]["state"] for s in snap["rows"]} == {"unreachable"}
    # No metrics URL known: said so, and no made-up numbers.
    c3cell = cells[("cluster1", "cluster3")]
    assert c3cell["state"] == "ready" and c3cell["lag"] is None and c3cell["rejections"] is None
    assert "no metrics URL known" in c3cell["sources"][1]
    texts = [p["text"] for p in snap["problems"]]
    assert any("cluster2: unreachable" in t for t in texts)
    assert any("cluster2 cached in cluster1: not-ready" in t for t in texts)
    assert any("duplicate-cluster-id" in t for t in texts)
    # The certificate expiring in 3 days is flagged; the CA (2036) is not.
    expiring = [c for c in snap["certificates"] if c["expiring"]]
    assert [(c["subject"], c["cluster"], c["seenBy"]) for c in expiring] == [
        ("remote", "cluster2", "cluster1")]
    assert any("certificate remote" in t for t in texts)


def test_the_cluster_itself_unreachable_when_its_etcd_is() -> None:
    """Answering, not ready, nobody leads (the lock is in its own etcd): unreachable;
    answering, not ready, a process record down: unreachable; not ready otherwise:
    not-ready."""
    no_leader = Leadership(STANDBY, "vm", 0, None, 0)
    down = parse_metrics("cilium_kvstoremesh_ready 0\n")
    lone = Observation(_target("cluster2"), "127.0.0.1:12", [], no_leader, "u", down)
    assert _snapshot(lone)["columns"][0]["state"] == "unreachable"
    noted = Observation(_target("cluster2", notes=["etcd process NOT RUNNING (pid 7)"]),
                        "127.0.0.1:12", [_model("cluster1")], _leader(), "u", down)
    col = _snapshot(noted)["columns"][0]
    assert col["state"] == "unreachable" and "etcd process NOT RUNNING" in col["detail"]
    assert _cells(_snapshot(noted))[("cluster1", "cluster2")]["state"] == "unreachable"
    slow = Observation(_target("cluster2"), "127.0.0.1:12", [_model("cluster1")], _leader(),
                       "u", down)
    assert _snapshot(slow)["columns"][0]["state"] == "not-ready"


def test_snapshot_holds_no_key_or_certificate_material() -> None:
    c1 = Observation(_target("cluster1"), "127.0.0.1:11", [_model("cluster2")], _leader(),
                     "http://127.0.0.1:9/metrics", parse_metrics(METRICS))
    text = json.dumps(_snapshot(c1))
    for needle in ("BEGIN", "PRIVATE", ".key", ".crt", ".pem", "certs/"):
        assert needle not in text
    cert = _snapshot(c1)["certificates"][0]
    assert set(cert) == {"seenBy", "cluster", "role", "subject", "notAfter", "daysLeft",
                         "expiring"}


def test_observe_an_unreachable_cluster_is_an_answer() -> None:
    o = observe(Target(name="gone", api="127.0.0.1:1", metrics={"kvstoremesh": "x"}),
                timeout=0.5)
    assert o.models is None and o.answered is None and o.metrics_url == "x"
    assert o.metrics is None


async def test_every_route_sends_the_security_headers() -> None:
    collector = Collector(lambda: [], refresh=60)
    async with TestClient(TestServer(make_app(collector))) as client:
        resp = await client.get("/api/v1/mesh")
        assert resp.status == 503  # before the first collection
        await collector.collect_once()
        for path in ("/", "/static/app.js", "/static/style.css", "/api/v1/mesh",
                     "/static/../server.py", "/nothing"):
            resp = await client.get(path)
            assert resp.headers["Content-Security-Policy"] == CSP == "default-src 'self'"
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
            assert resp.status == (404 if "server" in path or "nothing" in path else 200)
        api = await client.get("/api/v1/mesh")
        assert api.headers["Cache-Control"] == "no-store"
        assert (await api.json())["schema"] == SCHEMA
        page = await (await client.get("/")).text()
        # Nothing inline (CSP would refuse it) and nothing from elsewhere.
        assert "<script>" not in page and "style=" not in page and "<style" not in page
        assert "http" not in page.replace("http-equiv", "")
        js = await (await client.get("/static/app.js")).text()
        assert "innerHTML" not in js and "http" not in js


def test_listen_parsing() -> None:
    assert parse_listen("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_listen("[::1]:8080") == ("::1", 8080)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.com")
    for bad in ("8080", ":80", "host:x", "host:99999"):
        with contextlib.suppress(ValueError):
            parse_listen(bad)
            raise AssertionError(bad)


async def _serve_once(listen: str | None) -> list[str]:
    said: list[str] = []
    kwargs = {} if listen is None else {"listen": listen}
    task = asyncio.create_task(serve(Collector(lambda: [], refresh=60), say=said.append,
                                     **kwargs))
    for _ in range(200):
        if any("http://" in s for s in said):
            break
        await asyncio.sleep(0.01)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return said


async def test_binds_to_loopback_by_default_and_warns_otherwise() -> None:
    said = await _serve_once(None)
    assert len(said) == 1 and said[0].startswith("clustermesh dashboard: http://127.0.0.1:")
    said = await _serve_once("0.0.0.0:0")
    assert said[0].startswith("warning: listening on 0.0.0.0, not loopback")
    assert "no authentication" in said[0]
