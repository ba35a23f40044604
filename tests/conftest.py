"""Shared pytest fixtures.

The etcd fixtures start *real* etcd processes (see ``tests/harness``); nothing is mocked.
Every server a test gets comes from the function-scoped ``etcd_factory``, whose teardown
always stops all of them, pass or fail, and prints their log tails: pytest only shows
teardown output when a test failed, so a red test comes with the etcd logs that explain it.

Fixtures here stay thin; the logic belongs in ``tests/harness``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from harness import (
    EtcdCluster,
    EtcdFactory,
    EtcdNotFound,
    EtcdServer,
    Pki,
    enable_auth,
    find_etcd_binary,
    make_pki,
)
from harness.mesh import MeshEnv

#: Client certificates in the session PKI (CN = etcd user name). ``root`` is also the
#: harness's own identity on ``--client-cert-auth`` servers.
PKI_CLIENTS = ("root", "admin-c1", "remote", "local-c1", "alice")


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """CA + server certificate (localhost/127.0.0.1/::1) + the :data:`PKI_CLIENTS` certs."""
    return make_pki(tmp_path_factory.mktemp("pki"), clients=PKI_CLIENTS)


@pytest.fixture
def etcd_factory(tmp_path: Path) -> Iterator[EtcdFactory]:
    """``etcd_factory(**EtcdServer kwargs)`` → a started server;
    ``etcd_factory.cluster(**EtcdCluster kwargs)`` → a started cluster. All stopped at
    teardown."""
    factory = EtcdFactory(tmp_path / "etcd")
    try:
        yield factory
    finally:
        # Shown by pytest only if the test failed.
        print(factory.close())


@pytest.fixture
def etcd(etcd_factory: EtcdFactory) -> EtcdServer:
    """A started single-node, plain-HTTP etcd (default binary)."""
    return etcd_factory(name="etcd")


@pytest.fixture
def etcd_cluster(etcd_factory: EtcdFactory) -> EtcdCluster:
    """A started 3-member plain-HTTP cluster."""
    return etcd_factory.cluster()


@pytest.fixture
def etcd_tls(etcd_factory: EtcdFactory, pki: Pki) -> EtcdServer:
    """A started single node on https with ``--client-cert-auth`` (CA: ``pki.ca_file``)."""
    return etcd_factory(name="etcd-tls", tls=pki.server, client_cert_auth=True)


@pytest.fixture
def etcd_auth(etcd_factory: EtcdFactory) -> EtcdServer:
    """A started single node with auth on (simple tokens): ``root``/``rootpw`` and
    ``alice``/``alicepw`` with readwrite on the prefix ``cilium/``."""
    server = etcd_factory(name="etcd-auth", extra_args=["--auth-token=simple"])
    enable_auth(
        server,
        root_password="rootpw",
        users={"alice": "alicepw"},
        roles={"cilium-rw": [("readwrite", "cilium/", True)]},
        grants={"alice": ["cilium-rw"]},
    )
    return server


@pytest.fixture
def etcd35(etcd_factory: EtcdFactory) -> EtcdServer:
    """A started single node running etcd 3.5 (skips when no 3.5 binary is available)."""
    try:
        binary = find_etcd_binary("3.5")
    except EtcdNotFound as exc:
        pytest.skip(f"etcd 3.5 not available: {exc}")
    return etcd_factory(name="etcd35", binary=binary)


@pytest.fixture
async def mesh_env(tmp_path: Path, etcd_factory: EtcdFactory) -> AsyncIterator[MeshEnv]:
    """A local etcd (the cache), a config directory and helpers to add remote clusters
    and run KVStoreMesh in-process (see ``harness.mesh``)."""
    env = await MeshEnv.create(tmp_path / "mesh", etcd_factory)
    try:
        yield env
    finally:
        await env.close()
