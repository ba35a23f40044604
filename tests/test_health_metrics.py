"""The readiness and certificate expiry gauges of both daemons (``<ns>_ready``,
``<ns>_certificate_not_after_timestamp_seconds``), scraped from running daemons whose
etcds (real, on TLS) are configured with certificates of a throw-away PKI:

* the ready gauge is 0 while ``/readyz`` says not ready and 1 once it says ready;
* the not-after values are the certificates' (parsed here with ``cryptography``), with
  ``role``, ``target_cluster`` and ``subject``; a certificate rotated in place shows its new
  not-after on the next scrape;
* a file that cannot be read or parsed is left out and logged once;
* ``role="server"`` is what the etcds serve, as a TLS handshake probe
  (:mod:`clustermesh.servedcert`) sees it: exactly the server certificate's not-after
  and CN (the earliest of several endpoints), probed again after the interval on a fake
  clock (a rotated server certificate shows then, not before), a failed probe warned
  about once and its last value kept, a target that goes taking its series along.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from harness import EtcdFactory, EtcdServer, Pki, free_port, write_client_config
from harness.fakeclock import FakeClock
from harness.mesh import MeshEnv, sample_state
from harness.waiting import wait_until
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from apiserver.daemon import ApiServer, ApiserverOptions
from apiserver.sources import Kind, ObjectSink
from apiserver.sources.manifests import ManifestSource
from clustermesh.certmetrics import (
    CA,
    CLIENT,
    SERVER,
    CertificateCollector,
    CertificateFile,
    ServedExpiry,
)
from clustermesh.etcd.config import EtcdConfig, load_etcd_config
from clustermesh.servedcert import LOOK_INTERVAL, PROBE_INTERVAL, ServedCertificates

MESH_NS = "cilium_kvstoremesh"
API_NS = "cilium_clustermesh_apiserver"
EXPIRY = "certificate_not_after_timestamp_seconds"

Series = dict[tuple[str, str, str], float]  # (role, target_cluster, subject) -> value


async def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    async with aiohttp.ClientSession() as session, \
            session.get(f"http://127.0.0.1:{port}/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    return samples


async def ready_status(port: int) -> int:
    async with aiohttp.ClientSession() as session, \
            session.get(f"http://127.0.0.1:{port}/readyz") as resp:
        return resp.status


def ready_value(samples: dict[str, list[tuple[dict[str, str], float]]], ns: str) -> float:
    [(labels, value)] = samples[f"{ns}_ready"]
    assert labels == {}
    return value


def expiries(samples: dict[str, list[tuple[dict[str, str], float]]], ns: str) -> Series:
    return {(labels["role"], labels["target_cluster"], labels["subject"]): value
            for labels, value in samples.get(f"{ns}_{EXPIRY}", [])}


def not_after(path: Path) -> float:
    return x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc.timestamp()


def served_series(series: Series) -> Series:
    return {labels: value for labels, value in series.items() if labels[0] == SERVER}


def in_days(days: int) -> dt.datetime:
    # Whole seconds: Prometheus' text format keeps them exactly.
    return (dt.datetime.now(dt.UTC) + dt.timedelta(days=days)).replace(microsecond=0)


async def test_kvstoremesh_ready_and_certificate_expiry(
        tmp_path: Path, etcd_factory: EtcdFactory, pki: Pki) -> None:
    local_server = etcd_factory(name="local-tls", tls=pki.server, client_cert_auth=False)
    env = await MeshEnv.create(tmp_path / "mesh", etcd_factory, local_server)
    try:
        # The daemon's own configs name client certificates (the test's clients none).
        local_cert = pki.issue_client("kvstoremesh", stem="kvstoremesh", not_after=in_days(40))
        remote_end, rotated_end = in_days(20), in_days(90)
        write_client_config(env.local_config, endpoints=local_server.endpoints,
                            ca_file=pki.ca_file, cert_file=local_cert.cert_file,
                            key_file=local_cert.key_file)
        remote_server = etcd_factory(name="remote-c1", tls=pki.server, client_cert_auth=False)
        remote = await env.add_remote("c1", 1, server=remote_server, write_file=False)
        remote_cert = pki.issue_client("remote-c1", stem="remote-c1", not_after=remote_end)
        write_client_config(remote.config_file, endpoints=remote_server.endpoints,
                            ca_file=pki.ca_file, cert_file=remote_cert.cert_file,
                            key_file=remote_cert.key_file)
        await remote.publish(sample_state("c1", 1))  # no canaries yet: not synced

        mesh = await env.start_mesh(per_cluster_ready_timeout=60.0)
        await wait_until(lambda: "metrics" in mesh.runners, "the metrics server")
        metrics, health = mesh.port("metrics"), mesh.port("health")
        await wait_until(lambda: "c1" in mesh.remotes
                         and mesh.remotes["c1"].status().connected, "the remote to connect")
        assert await ready_status(health) == 500
        # The served certificates come from the background probe: the local etcd's from
        # the start, the remote's soon after its session began.
        served = {(SERVER, "local", "server"): not_after(pki.server.cert_file),
                  (SERVER, "c1", "server"): not_after(pki.server.cert_file)}
        await wait_until(lambda: _served(metrics, MESH_NS, served), "both served certificates")
        samples = await scrape(metrics)
        assert ready_value(samples, MESH_NS) == 0

        ca_subject = subject_cn(pki.ca_file)
        assert expiries(samples, MESH_NS) == {
            (CLIENT, "local", "kvstoremesh"): not_after(local_cert.cert_file),
            (CA, "local", ca_subject): not_after(pki.ca_file),
            (CLIENT, "c1", "remote-c1"): not_after(remote_cert.cert_file),
            (CA, "c1", ca_subject): not_after(pki.ca_file),
            **served,
        }
        assert not_after(remote_cert.cert_file) == remote_end.timestamp()

        await remote.write_canaries()
        await wait_until(lambda: _ready(metrics, MESH_NS), "the ready gauge to turn 1")
        assert await ready_status(health) == 200

        # Rotation in place (same path, atomic replace): the next scrape has the new date.
        rotated = pki.issue_client("remote-c1", stem="remote-c1", not_after=rotated_end)
        assert rotated.cert_file == remote_cert.cert_file
        series = expiries(await scrape(metrics), MESH_NS)
        assert series[(CLIENT, "c1", "remote-c1")] == not_after(rotated.cert_file) \
            == rotated_end.timestamp()
        assert series[(CLIENT, "local", "kvstoremesh")] == not_after(local_cert.cert_file)
    finally:
        await env.stop_mesh()
        await env.close()


async def _ready(port: int, ns: str) -> bool:
    return ready_value(await scrape(port), ns) == 1


async def _served(port: int, ns: str, wanted: Series) -> bool:
    return served_series(expiries(await scrape(port), ns)) == wanted


class GatedSource(ManifestSource):
    """The manifests source, which starts listing only once ``gate`` is set."""

    def __init__(self, directory: Path, gate: asyncio.Event) -> None:
        super().__init__(directory, interval=0.05)
        self.gate = gate

    async def run(self, sink: ObjectSink, kinds: Sequence[Kind]) -> None:
        await self.gate.wait()
        await super().run(sink, kinds)


async def test_apiserver_ready_and_certificate_expiry(
        tmp_path: Path, etcd_factory: EtcdFactory, pki: Pki) -> None:
    etcd = etcd_factory(name="etcd-tls", tls=pki.server, client_cert_auth=True)
    end, rotated_end = in_days(30), in_days(120)
    cert = pki.issue_client("apiserver", stem="apiserver", not_after=end)
    config = etcd.client_config(tmp_path / "etcd.yaml", client=cert)
    gate = asyncio.Event()
    server = ApiServer(ApiserverOptions(
        cluster_name="cluster1", cluster_id=1, local_config=config, health_port=0,
        prometheus_serve_addr="127.0.0.1:0"), GatedSource(tmp_path / "manifests", gate))
    stop = asyncio.Event()
    task = asyncio.create_task(server.run(stop))
    try:
        await wait_until(lambda: server.publisher is not None, "the apiserver to connect")
        metrics, health = server.port("metrics"), server.port("health")
        assert await ready_status(health) == 500
        served = {(SERVER, "cluster1", "server"): not_after(pki.server.cert_file)}
        await wait_until(lambda: _served(metrics, API_NS, served), "the served certificate")
        samples = await scrape(metrics)
        assert ready_value(samples, API_NS) == 0
        assert expiries(samples, API_NS) == {
            (CLIENT, "cluster1", "apiserver"): end.timestamp(),
            (CA, "cluster1", subject_cn(pki.ca_file)): not_after(pki.ca_file),
            **served,
        }

        gate.set()
        await wait_until(lambda: _ready(metrics, API_NS), "the ready gauge to turn 1")
        assert await ready_status(health) == 200

        pki.issue_client("apiserver", stem="apiserver", not_after=rotated_end)
        series = expiries(await scrape(metrics), API_NS)
        assert series[(CLIENT, "cluster1", "apiserver")] == rotated_end.timestamp()
    finally:
        stop.set()
        await task


def test_unreadable_files_are_left_out_and_logged_once(
        tmp_path: Path, pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    missing = tmp_path / "missing.pem"
    good = pki.client("alice").cert_file
    files = [CertificateFile(CLIENT, "c1", good), CertificateFile(CLIENT, "c2", garbage),
             CertificateFile(CA, "c3", missing, bundle=True)]
    collector = CertificateCollector("t", lambda: files)

    def collect() -> Series:
        return collected(collector)

    with caplog.at_level(logging.WARNING, logger="clustermesh.certmetrics"):
        assert collect() == {(CLIENT, "c1", "alice"): not_after(good)}
        assert collect() == {(CLIENT, "c1", "alice"): not_after(good)}
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 2, warned
    assert any(str(garbage) in m for m in warned) and any(str(missing) in m for m in warned)

    # The missing file appears (a bundle: every certificate, the later of equal labels).
    missing.write_bytes(pki.ca_file.read_bytes() * 2)
    assert collect()[(CA, "c3", subject_cn(pki.ca_file))] == not_after(pki.ca_file)
    assert len(caplog.records) == 2


def subject_cn(path: Path) -> str:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return str(cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value)


def collected(collector: CertificateCollector) -> Series:
    [family] = collector.collect()
    return {(s.labels["role"], s.labels["target_cluster"], s.labels["subject"]): s.value
            for s in family.samples}


def tls_config(path: Path, pki: Pki, endpoints: Sequence[str]) -> EtcdConfig:
    """A config trusting the PKI's CA, presenting a client certificate of it (which
    ``--client-cert-auth`` asks for)."""
    cert = pki.client("root")
    return load_etcd_config(write_client_config(
        path, endpoints=endpoints, ca_file=pki.ca_file, cert_file=cert.cert_file,
        key_file=cert.key_file))


async def test_probe_reports_the_served_certificate(
        tmp_path: Path, etcd_tls: EtcdServer, etcd_factory: EtcdFactory, pki: Pki) -> None:
    config = tls_config(tmp_path / "c1.yaml", pki, etcd_tls.endpoints)
    served = ServedCertificates(lambda: {"c1": config})
    await served.probe_due()
    assert served.series() == [ServedExpiry("c1", "server", not_after(pki.server.cert_file))]

    # Two members serving certificates of one CN: the earliest not-after of the two.
    end = in_days(10)
    earlier = pki.issue_server("server", not_after=end)
    other = etcd_factory(name="etcd-tls-earlier", tls=earlier, client_cert_auth=True)
    both = tls_config(tmp_path / "c2.yaml", pki, [*etcd_tls.endpoints, *other.endpoints])
    served = ServedCertificates(lambda: {"c2": both})
    await served.probe_due()
    assert served.series() == [ServedExpiry("c2", "server", end.timestamp())]
    assert end.timestamp() == not_after(earlier.cert_file) < not_after(pki.server.cert_file)


async def test_probe_reruns_after_the_interval_and_sees_a_rotated_certificate(
        tmp_path: Path, etcd_factory: EtcdFactory, pki: Pki) -> None:
    # A server certificate of this test's own: the session's is shared.
    tls = pki.issue_server("server", not_after=in_days(50))
    etcd = etcd_factory(name="etcd-rotating", tls=tls, client_cert_auth=True)
    config = tls_config(tmp_path / "c1.yaml", pki, etcd.endpoints)
    fake = FakeClock()
    served = ServedCertificates(lambda: {"c1": config}, clock=fake.clock)
    task = asyncio.create_task(served.run())
    try:
        first = [ServedExpiry("c1", "server", not_after(tls.cert_file))]
        await fake.wait_for_sleeps(1)  # the probe at start is done
        assert served.series() == first

        # etcd reads its certificate files at each handshake: the next probe sees this.
        rotated_end = in_days(200)
        rotated = pki.issue_server("server-rotated", stem=tls.cert_file.stem,
                                   not_after=rotated_end)
        assert rotated.cert_file == tls.cert_file
        fake.advance(LOOK_INTERVAL)
        await fake.wait_for_sleeps(2)  # a look at the targets, nothing due yet
        assert served.series() == first

        fake.advance(PROBE_INTERVAL - LOOK_INTERVAL)
        await fake.wait_for_sleeps(3)  # the interval is over: probed again
        assert served.series() == [ServedExpiry("c1", "server-rotated",
                                                rotated_end.timestamp())]
        assert fake.sleeps == [LOOK_INTERVAL] * 3
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_failed_probe_warns_once_keeps_the_last_value_and_scrapes(
        tmp_path: Path, etcd_tls: EtcdServer, pki: Pki,
        caplog: pytest.LogCaptureFixture) -> None:
    unreachable = f"https://127.0.0.1:{free_port()}"
    targets = {
        "c2": tls_config(tmp_path / "c2.yaml", pki, [*etcd_tls.endpoints, unreachable]),
        # Plain text: no certificate, never probed.
        "plain": load_etcd_config(write_client_config(
            tmp_path / "plain.yaml", endpoints=[f"http://127.0.0.1:{free_port()}"])),
    }
    fake = FakeClock()
    served = ServedCertificates(lambda: targets, clock=fake.clock)
    collector = CertificateCollector("t", lambda: [], served=served.series)
    registry = CollectorRegistry()
    registry.register(collector)
    known = {(SERVER, "c2", "server"): not_after(pki.server.cert_file)}

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]

    with caplog.at_level(logging.WARNING, logger="clustermesh.servedcert"):
        await served.probe_due()
        assert collected(collector) == known
        assert b'role="server"' in generate_latest(registry)  # the scrape works
        [warning] = warnings()
        assert "cluster c2" in warning and unreachable in warning, warning

        # The reachable member goes down too: its last value stays, one warning for it.
        etcd_tls.stop()
        for _ in range(2):
            fake.advance(PROBE_INTERVAL)
            await served.probe_due()
            assert collected(collector) == known
        assert len(warnings()) == 2, warnings()
        assert etcd_tls.client_url in warnings()[1]

    # A target that goes takes its series along, from the next scrape on.
    del targets["c2"]
    assert collected(collector) == {}
