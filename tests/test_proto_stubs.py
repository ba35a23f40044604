"""The generated gRPC stubs (clustermesh/etcd/pb) are up to date with proto/, and speak
etcd's wire format: package/service/method names and field numbers as in etcd's own
``api/etcdserverpb/rpc.proto``, ``api/mvccpb/kv.proto`` and ``api/authpb/auth.proto``.

The tables below were written from etcd's protos, independently of ours: a renumbered
or renamed field would still round-trip through our own stubs, but etcd would misread it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from google.protobuf.descriptor import FieldDescriptor

from clustermesh.etcd.pb import auth_pb2, kv_pb2, rpc_pb2

ROOT = Path(__file__).resolve().parent.parent
GENERATE = ROOT / "proto" / "generate.py"
PB_DIR = ROOT / "clustermesh" / "etcd" / "pb"


def load_generate() -> ModuleType:
    spec = importlib.util.spec_from_file_location("proto_generate", GENERATE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------- freshness


def test_stubs_are_not_stale() -> None:
    pytest.importorskip("grpc_tools")
    assert load_generate().stale_files() == []


def test_stale_check_detects_a_changed_stub(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    copy = tmp_path / "pb"
    shutil.copytree(PB_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    with (copy / "kv_pb2.py").open("a") as f:
        f.write("# edited by hand\n")
    (copy / "rpc_pb2_grpc.py").unlink()
    assert load_generate().stale_files(copy) == ["kv_pb2.py", "rpc_pb2_grpc.py"]


def test_generate_check_cli() -> None:
    pytest.importorskip("grpc_tools")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(GENERATE), "--check"], capture_output=True,
                          text=True, timeout=120, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


# ----------------------------------------------------------------------------- names

SERVICES = {
    "etcdserverpb.KV": {
        "Range": ("RangeRequest", "RangeResponse", False, False),
        "Put": ("PutRequest", "PutResponse", False, False),
        "DeleteRange": ("DeleteRangeRequest", "DeleteRangeResponse", False, False),
        "Txn": ("TxnRequest", "TxnResponse", False, False),
        "Compact": ("CompactionRequest", "CompactionResponse", False, False),
    },
    "etcdserverpb.Watch": {
        "Watch": ("WatchRequest", "WatchResponse", True, True),
    },
    "etcdserverpb.Lease": {
        "LeaseGrant": ("LeaseGrantRequest", "LeaseGrantResponse", False, False),
        "LeaseRevoke": ("LeaseRevokeRequest", "LeaseRevokeResponse", False, False),
        "LeaseKeepAlive": ("LeaseKeepAliveRequest", "LeaseKeepAliveResponse", True, True),
        "LeaseTimeToLive": ("LeaseTimeToLiveRequest", "LeaseTimeToLiveResponse", False,
                            False),
    },
    "etcdserverpb.Cluster": {
        "MemberList": ("MemberListRequest", "MemberListResponse", False, False),
    },
    "etcdserverpb.Maintenance": {
        "Status": ("StatusRequest", "StatusResponse", False, False),
    },
    "etcdserverpb.Auth": {
        "AuthEnable": ("AuthEnableRequest", "AuthEnableResponse", False, False),
        "AuthStatus": ("AuthStatusRequest", "AuthStatusResponse", False, False),
        "Authenticate": ("AuthenticateRequest", "AuthenticateResponse", False, False),
        "UserAdd": ("AuthUserAddRequest", "AuthUserAddResponse", False, False),
        "UserGet": ("AuthUserGetRequest", "AuthUserGetResponse", False, False),
        "UserList": ("AuthUserListRequest", "AuthUserListResponse", False, False),
        "UserDelete": ("AuthUserDeleteRequest", "AuthUserDeleteResponse", False, False),
        "UserGrantRole": ("AuthUserGrantRoleRequest", "AuthUserGrantRoleResponse", False,
                          False),
        "UserRevokeRole": ("AuthUserRevokeRoleRequest", "AuthUserRevokeRoleResponse", False,
                           False),
        "RoleAdd": ("AuthRoleAddRequest", "AuthRoleAddResponse", False, False),
        "RoleGet": ("AuthRoleGetRequest", "AuthRoleGetResponse", False, False),
        "RoleList": ("AuthRoleListRequest", "AuthRoleListResponse", False, False),
        "RoleDelete": ("AuthRoleDeleteRequest", "AuthRoleDeleteResponse", False, False),
        "RoleGrantPermission": ("AuthRoleGrantPermissionRequest",
                                "AuthRoleGrantPermissionResponse", False, False),
    },
}


def test_packages() -> None:
    assert kv_pb2.DESCRIPTOR.package == "mvccpb"
    assert auth_pb2.DESCRIPTOR.package == "authpb"
    assert rpc_pb2.DESCRIPTOR.package == "etcdserverpb"


def test_services_and_methods() -> None:
    services = {s.full_name: s for s in rpc_pb2.DESCRIPTOR.services_by_name.values()}
    assert set(services) == set(SERVICES)
    stub_source = (PB_DIR / "rpc_pb2_grpc.py").read_text()
    for service_name, methods in SERVICES.items():
        service = services[service_name]
        assert {m.name for m in service.methods} == set(methods), service_name
        for name, (request, response, client_stream, server_stream) in methods.items():
            method = service.methods_by_name[name]
            assert method.full_name == f"{service_name}.{name}"
            assert method.input_type.full_name == f"etcdserverpb.{request}"
            assert method.output_type.full_name == f"etcdserverpb.{response}"
            assert (method.client_streaming, method.server_streaming) == (
                client_stream, server_stream), method.full_name
            # The HTTP/2 path the stub sends: what etcd's gRPC server routes on.
            assert f"'/{service_name}/{name}'" in stub_source


# ---------------------------------------------------------------------- field numbers

# message full name -> {field: (number, type)}
B, S, I64, U64, BOOL, E, M = "bytes", "string", "int64", "uint64", "bool", "enum", "message"
FIELDS: dict[str, dict[str, tuple[int, str]]] = {
    "mvccpb.KeyValue": {"key": (1, B), "create_revision": (2, I64), "mod_revision": (3, I64),
                        "version": (4, I64), "value": (5, B), "lease": (6, I64)},
    "mvccpb.Event": {"type": (1, E), "kv": (2, M), "prev_kv": (3, M)},
    "authpb.UserAddOptions": {"no_password": (1, BOOL)},
    "authpb.Permission": {"permType": (1, E), "key": (2, B), "range_end": (3, B)},
    "etcdserverpb.ResponseHeader": {"cluster_id": (1, U64), "member_id": (2, U64),
                                    "revision": (3, I64), "raft_term": (4, U64)},
    "etcdserverpb.RangeRequest": {
        "key": (1, B), "range_end": (2, B), "limit": (3, I64), "revision": (4, I64),
        "sort_order": (5, E), "sort_target": (6, E), "serializable": (7, BOOL),
        "keys_only": (8, BOOL), "count_only": (9, BOOL), "min_mod_revision": (10, I64),
        "max_mod_revision": (11, I64), "min_create_revision": (12, I64),
        "max_create_revision": (13, I64)},
    "etcdserverpb.RangeResponse": {"header": (1, M), "kvs": (2, M), "more": (3, BOOL),
                                   "count": (4, I64)},
    "etcdserverpb.PutRequest": {"key": (1, B), "value": (2, B), "lease": (3, I64),
                                "prev_kv": (4, BOOL), "ignore_value": (5, BOOL),
                                "ignore_lease": (6, BOOL)},
    "etcdserverpb.PutResponse": {"header": (1, M), "prev_kv": (2, M)},
    "etcdserverpb.DeleteRangeRequest": {"key": (1, B), "range_end": (2, B),
                                        "prev_kv": (3, BOOL)},
    "etcdserverpb.DeleteRangeResponse": {"header": (1, M), "deleted": (2, I64),
                                         "prev_kvs": (3, M)},
    "etcdserverpb.RequestOp": {"request_range": (1, M), "request_put": (2, M),
                               "request_delete_range": (3, M), "request_txn": (4, M)},
    "etcdserverpb.ResponseOp": {"response_range": (1, M), "response_put": (2, M),
                                "response_delete_range": (3, M), "response_txn": (4, M)},
    "etcdserverpb.Compare": {
        "result": (1, E), "target": (2, E), "key": (3, B), "version": (4, I64),
        "create_revision": (5, I64), "mod_revision": (6, I64), "value": (7, B),
        "lease": (8, I64), "range_end": (64, B)},
    "etcdserverpb.TxnRequest": {"compare": (1, M), "success": (2, M), "failure": (3, M)},
    "etcdserverpb.TxnResponse": {"header": (1, M), "succeeded": (2, BOOL),
                                 "responses": (3, M)},
    "etcdserverpb.CompactionRequest": {"revision": (1, I64), "physical": (2, BOOL)},
    "etcdserverpb.CompactionResponse": {"header": (1, M)},
    "etcdserverpb.WatchRequest": {"create_request": (1, M), "cancel_request": (2, M),
                                  "progress_request": (3, M)},
    "etcdserverpb.WatchCreateRequest": {
        "key": (1, B), "range_end": (2, B), "start_revision": (3, I64),
        "progress_notify": (4, BOOL), "filters": (5, E), "prev_kv": (6, BOOL),
        "watch_id": (7, I64), "fragment": (8, BOOL)},
    "etcdserverpb.WatchCancelRequest": {"watch_id": (1, I64)},
    "etcdserverpb.WatchProgressRequest": {},
    "etcdserverpb.WatchResponse": {
        "header": (1, M), "watch_id": (2, I64), "created": (3, BOOL), "canceled": (4, BOOL),
        "compact_revision": (5, I64), "cancel_reason": (6, S), "fragment": (7, BOOL),
        "events": (11, M)},
    "etcdserverpb.LeaseGrantRequest": {"TTL": (1, I64), "ID": (2, I64)},
    "etcdserverpb.LeaseGrantResponse": {"header": (1, M), "ID": (2, I64), "TTL": (3, I64),
                                        "error": (4, S)},
    "etcdserverpb.LeaseRevokeRequest": {"ID": (1, I64)},
    "etcdserverpb.LeaseRevokeResponse": {"header": (1, M)},
    "etcdserverpb.LeaseKeepAliveRequest": {"ID": (1, I64)},
    "etcdserverpb.LeaseKeepAliveResponse": {"header": (1, M), "ID": (2, I64),
                                            "TTL": (3, I64)},
    "etcdserverpb.LeaseTimeToLiveRequest": {"ID": (1, I64), "keys": (2, BOOL)},
    "etcdserverpb.LeaseTimeToLiveResponse": {"header": (1, M), "ID": (2, I64),
                                             "TTL": (3, I64), "grantedTTL": (4, I64),
                                             "keys": (5, B)},
    "etcdserverpb.Member": {"ID": (1, U64), "name": (2, S), "peerURLs": (3, S),
                            "clientURLs": (4, S), "isLearner": (5, BOOL)},
    "etcdserverpb.MemberListRequest": {"linearizable": (1, BOOL)},
    "etcdserverpb.MemberListResponse": {"header": (1, M), "members": (2, M)},
    "etcdserverpb.StatusRequest": {},
    "etcdserverpb.StatusResponse": {
        "header": (1, M), "version": (2, S), "dbSize": (3, I64), "leader": (4, U64),
        "raftIndex": (5, U64), "raftTerm": (6, U64), "raftAppliedIndex": (7, U64),
        "errors": (8, S), "dbSizeInUse": (9, I64), "isLearner": (10, BOOL)},
    "etcdserverpb.AuthEnableRequest": {},
    "etcdserverpb.AuthEnableResponse": {"header": (1, M)},
    "etcdserverpb.AuthStatusRequest": {},
    "etcdserverpb.AuthStatusResponse": {"header": (1, M), "enabled": (2, BOOL),
                                        "authRevision": (3, U64)},
    "etcdserverpb.AuthenticateRequest": {"name": (1, S), "password": (2, S)},
    "etcdserverpb.AuthenticateResponse": {"header": (1, M), "token": (2, S)},
    "etcdserverpb.AuthUserAddRequest": {"name": (1, S), "password": (2, S),
                                        "options": (3, M), "hashedPassword": (4, S)},
    "etcdserverpb.AuthUserGetRequest": {"name": (1, S)},
    "etcdserverpb.AuthUserGetResponse": {"header": (1, M), "roles": (2, S)},
    "etcdserverpb.AuthUserListRequest": {},
    "etcdserverpb.AuthUserListResponse": {"header": (1, M), "users": (2, S)},
    "etcdserverpb.AuthUserDeleteRequest": {"name": (1, S)},
    "etcdserverpb.AuthUserGrantRoleRequest": {"user": (1, S), "role": (2, S)},
    "etcdserverpb.AuthUserRevokeRoleRequest": {"name": (1, S), "role": (2, S)},
    "etcdserverpb.AuthRoleAddRequest": {"name": (1, S)},
    "etcdserverpb.AuthRoleGetRequest": {"role": (1, S)},
    "etcdserverpb.AuthRoleGetResponse": {"header": (1, M), "perm": (2, M)},
    "etcdserverpb.AuthRoleListRequest": {},
    "etcdserverpb.AuthRoleListResponse": {"header": (1, M), "roles": (2, S)},
    "etcdserverpb.AuthRoleDeleteRequest": {"role": (1, S)},
    "etcdserverpb.AuthRoleGrantPermissionRequest": {"name": (1, S), "perm": (2, M)},
}

TYPE_NAMES = {
    FieldDescriptor.TYPE_BYTES: B, FieldDescriptor.TYPE_STRING: S,
    FieldDescriptor.TYPE_INT64: I64, FieldDescriptor.TYPE_UINT64: U64,
    FieldDescriptor.TYPE_BOOL: BOOL, FieldDescriptor.TYPE_ENUM: E,
    FieldDescriptor.TYPE_MESSAGE: M,
}


def all_messages() -> dict[str, object]:
    found: dict[str, object] = {}
    for module in (kv_pb2, auth_pb2, rpc_pb2):
        for message in module.DESCRIPTOR.message_types_by_name.values():
            found[message.full_name] = message
    return found


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_field_numbers_and_types(name: str) -> None:
    message = all_messages().get(name)
    assert message is not None, f"{name} is missing"
    actual = {
        f.name: (f.number, TYPE_NAMES.get(f.type, str(f.type)))
        for f in message.fields  # type: ignore[attr-defined]
    }
    # Every field we declare has etcd's number and type (a subset of etcd's fields is fine).
    unknown = set(actual) - set(FIELDS[name])
    assert not unknown, f"{name}: fields not in etcd's proto: {unknown}"
    assert actual == {k: v for k, v in FIELDS[name].items() if k in actual}


def test_fields_the_client_relies_on_exist() -> None:
    messages = all_messages()
    required = {
        "mvccpb.KeyValue": set(FIELDS["mvccpb.KeyValue"]),
        "etcdserverpb.WatchResponse": {"header", "created", "canceled", "compact_revision",
                                       "cancel_reason", "events"},
        "etcdserverpb.Compare": {"key", "target", "result", "value", "mod_revision",
                                 "range_end"},
        "etcdserverpb.RangeRequest": {"key", "range_end", "revision", "limit", "keys_only",
                                      "count_only"},
    }
    for name, fields in required.items():
        have = {f.name for f in messages[name].fields}  # type: ignore[attr-defined]
        assert fields <= have, f"{name} lacks {fields - have}"


def test_enums() -> None:
    assert dict(kv_pb2.Event.EventType.items()) == {"PUT": 0, "DELETE": 1}
    assert dict(auth_pb2.Permission.Type.items()) == {"READ": 0, "WRITE": 1, "READWRITE": 2}
    assert dict(rpc_pb2.Compare.CompareResult.items()) == {
        "EQUAL": 0, "GREATER": 1, "LESS": 2, "NOT_EQUAL": 3}
    assert dict(rpc_pb2.Compare.CompareTarget.items()) == {
        "VERSION": 0, "CREATE": 1, "MOD": 2, "VALUE": 3, "LEASE": 4}
    assert dict(rpc_pb2.WatchCreateRequest.FilterType.items()) == {"NOPUT": 0, "NODELETE": 1}


def test_wire_bytes() -> None:
    """Serialized bytes, hand-encoded from etcd's field numbers (tag = number << 3 | type)."""
    put = rpc_pb2.PutRequest(key=b"k", value=b"v", lease=1)
    assert put.SerializeToString() == b"\x0a\x01k\x12\x01v\x18\x01"
    compare = rpc_pb2.Compare(key=b"a", range_end=b"z")
    assert compare.SerializeToString() == b"\x1a\x01a\x82\x04\x01z"  # field 64: 0x82 0x04
    watch = rpc_pb2.WatchResponse(events=[kv_pb2.Event(type=kv_pb2.Event.DELETE)])
    assert watch.SerializeToString() == b"\x5a\x02\x08\x01"  # field 11, then type=1
    kv = kv_pb2.KeyValue.FromString(b"\x0a\x01k\x10\x02\x18\x03\x20\x04\x2a\x01v\x30\x06")
    assert (kv.key, kv.create_revision, kv.mod_revision, kv.version, kv.value, kv.lease) == (
        b"k", 2, 3, 4, b"v", 6)
