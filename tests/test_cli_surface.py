"""The command-line surface of ``clustermesh-apiserver``: upstream's commands and flags.

* every flag of facts §3 (etcdinit), §6 (kvstoremesh) and §10 (clustermesh) parsed by its
  subcommand, into the option it means or into the "accepted without effect" registry
  (tables), and the exact arguments Cilium's chart renders (§2.2-2.5);
* Cilium's conventions (:mod:`clustermesh.goflags`): ``CILIUM_*`` environment binding,
  pflag bool syntax including ``--flag false``, maps, no abbreviations, cobra's error
  text and exit status for an unknown flag or command;
* the daemon as a real process configured from env, logging the no-effect line once.

The debug commands are in ``test_cli_dbg.py``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from harness import EtcdServer, free_port

from apiserver import etcdinit
from apiserver import main as apiserver_main
from clustermesh.goflags import FlagError, FlagSet, log_no_effect, no_effect_flags
from clustermesh_tools import apiserver_binary
from kvstoremesh import main as kvstoremesh_main
from kvstoremesh.statuscmd import fetch

REPO = Path(__file__).resolve().parents[1]
NO_EFFECT = "no-effect"
KVM_BASE = ["--cluster-name=c1", "--cluster-id=1", "--clustermesh-config=/cfg",
            "--kvstore-opt=etcd.config=/etcd.yaml"]
API_BASE = ["--cluster-name=c1", "--cluster-id=1", "--kvstore-opt=etcd.config=/etcd.yaml"]

# (args, what to look at, expected): "options.<field>", "source.<attr>...", "args.<dest>",
# or NO_EFFECT (the flag is in the accepted-without-effect registry once set).
KVSTOREMESH_FLAGS: list[tuple[list[str], str, Any]] = [
    (["--per-cluster-ready-timeout=20s"], "options.per_cluster_ready_timeout", 20.0),
    (["--global-ready-timeout", "5m"], "options.global_ready_timeout", 300.0),
    (["--enable-heartbeat"], "options.enable_heartbeat", True),
    (["--enable-heartbeat=false"], "options.enable_heartbeat", False),
    (["--disable-drain-on-disconnection"], "options.disable_drain_on_disconnection", True),
    (["--clustermesh-config=/x"], "options.config_dir", Path("/x")),
    (["--clustermesh-cache-ttl=1h30m"], "options.cache_ttl", 5400.0),
    (["--api-serve-addr=0.0.0.0:9889"], "options.api_serve_addr", "0.0.0.0:9889"),
    (["--health-port=9881"], "options.health_port", 9881),
    (["--kvstore=etcd"], "args.kvstore", "etcd"),
    (["--kvstore-opt", "etcd.qps=100,etcd.maxInflight=10"], "options.max_inflight", 10),
    (["--kvstore-opt=etcd.bootstrapQps=10000"], "options.bootstrap_qps", 10000.0),
    (["--kvstore-lease-ttl=15m"], NO_EFFECT, None),
    (["--kvstore-max-consecutive-quorum-errors=5"], "options.max_consecutive_quorum_errors", 5),
    (["--kvstore-connectivity-timeout=2m"], NO_EFFECT, None),
    (["--kvstore-periodic-sync=5m"], NO_EFFECT, None),
    (["--controller-group-metrics=all"], "options.controller_group_metrics", ("all",)),
    (["--controller-group-metrics=a,b", "--controller-group-metrics", "c"],
     "options.controller_group_metrics", ("a", "b", "c")),
    (["--max-connected-clusters=511"], "options.max_connected_clusters", 511),
    (["--cluster-name=east"], "options.cluster_name", "east"),
    (["--cluster-id=42"], "options.cluster_id", 42),
    (["-D"], "options.debug", True),
    (["--debug=true"], "options.debug", True),
    (["--log-driver=syslog"], NO_EFFECT, None),
    (["--log-opt", "format=json"], NO_EFFECT, None),
    (["--enable-gops=false"], NO_EFFECT, None),
    (["--gops-port=9894"], NO_EFFECT, None),
    (["--pprof"], NO_EFFECT, None),
    (["--pprof-address=0.0.0.0"], NO_EFFECT, None),
    (["--pprof-port=6064"], NO_EFFECT, None),
    (["--prometheus-serve-addr=:9964"], "options.prometheus_serve_addr", ":9964"),
    (["--shell-sock-path=/tmp/s.sock"], NO_EFFECT, None),
    (["--crd-wait-timeout=5m"], NO_EFFECT, None),
    # Ours.
    (["--cluster-removal-grace=10s"], "options.removal_grace", 10.0),
    (["--heartbeat-timeout=1m"], "options.heartbeat_timeout", 60.0),
    (["--status-check-interval=5s"], "options.status_check_interval", 5.0),
    (["--validate-remote-data=false"], "options.validate_remote_data", False),
    (["--max-txn-ops=1024"], "options.max_txn_ops", 1024),
    (["--max-request-bytes=1000"], "options.max_request_bytes", 1000),
    (["--log-level=warning"], "args.log_level", "warning"),
    (["--log-format=json"], "args.log_format", "json"),
]

CLUSTERMESH_FLAGS: list[tuple[list[str], str, Any]] = [
    (["--cluster-users-enabled"], "options.cluster_users_enabled", True),
    (["--cluster-users-config-path=/u.yaml"], "options.cluster_users_config_path",
     Path("/u.yaml")),
    (["--clustermesh-default-global-namespace=false"], "options.default_global_namespace",
     False),
    (["--clustermesh-enable-mcs-api"], "options.mcs_api", True),
    (["--clustermesh-mcs-api-install-crds=false"], NO_EFFECT, None),
    (["--controller-group-metrics=all"], "options.controller_group_metrics", ("all",)),
    (["--crd-wait-timeout=1m"], NO_EFFECT, None),
    (["-D"], "options.debug", True),
    (["--enable-gops=false"], NO_EFFECT, None),
    (["--gops-port=9892"], NO_EFFECT, None),
    (["--enable-k8s=true"], NO_EFFECT, None),
    (["--enable-k8s-api-discovery"], NO_EFFECT, None),
    (["--enable-k8s-endpoint-slice=false"], NO_EFFECT, None),
    (["--health-port=9880"], "options.health_port", 9880),
    (["--k8s-api-server=https://10.0.0.1:6443"], "source.api_server", "https://10.0.0.1:6443"),
    (["--k8s-client-burst=30"], "source.rate_limiter.burst", 30),
    (["--k8s-client-qps=15.5"], "source.rate_limiter.qps", 15.5),
    (["--k8s-client-connection-keep-alive=30s"], NO_EFFECT, None),
    (["--k8s-client-connection-timeout=30s"], NO_EFFECT, None),
    (["--k8s-heartbeat-timeout=30s"], NO_EFFECT, None),
    (["--k8s-kubeconfig-path=/k"], "source.kubeconfig", Path("/k")),
    (["--kubeconfig", "/k2"], "source.kubeconfig", Path("/k2")),
    (["--k8s-service-proxy-name=mine"], "source.label_selectors.Service",
     "service.kubernetes.io/service-proxy-name=mine"),
    (["--kvstore=etcd"], "args.kvstore", "etcd"),
    (["--kvstore-opt=etcd.qps=20", "--kvstore-opt=etcd.bootstrapQps=10000"], "options.qps",
     20.0),
    (["--kvstore-lease-ttl=15m"], NO_EFFECT, None),
    (["--kvstore-max-consecutive-quorum-errors=3"], "options.max_consecutive_quorum_errors", 3),
    (["--log-driver=fluentd"], NO_EFFECT, None),
    (["--log-opt=level=debug"], NO_EFFECT, None),
    (["--max-connected-clusters=511"], "options.max_connected_clusters", 511),
    (["--pprof=true"], NO_EFFECT, None),
    (["--pprof-address=localhost"], NO_EFFECT, None),
    (["--pprof-port=6063"], NO_EFFECT, None),
    (["--prometheus-serve-addr=:9962"], "options.prometheus_serve_addr", ":9962"),
    (["--shell-sock-path=/tmp/s.sock"], NO_EFFECT, None),
    (["--enable-cilium-endpoint-slice"], "options.cilium_endpoint_slices", True),
    (["--enable-external-workloads=false"], NO_EFFECT, None),
    # Ours.
    (["--source=manifests", "--manifests-dir=/m"], "source.directory", Path("/m")),
    (["--clustermesh-service-v2=only-endpointslice"], "options.service_v2",
     "only-endpointslice"),
    (["--max-txn-ops=256"], "options.max_txn_ops", 256),
    (["--heartbeat-interval=5s"], "options.heartbeat_interval", 5.0),
]


def _look(path: str, objects: dict[str, Any]) -> Any:
    head, *rest = path.split(".")
    value = objects[head]
    for part in rest:
        value = value[part] if isinstance(value, dict) else getattr(value, part)
    return value


def _parse_kvstoremesh(args: list[str], env: dict[str, str] | None = None
                       ) -> dict[str, Any]:
    fs = kvstoremesh_main.build_parser()
    parsed = fs.parse(args, env=env or {})
    return {"args": parsed, "options": kvstoremesh_main.options_from_args(parsed),
            "no_effect": [f.name for f in no_effect_flags(fs, parsed)]}


def _parse_clustermesh(args: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    fs = apiserver_main.build_parser()
    parsed = fs.parse(args, env=env or {})
    options, source = apiserver_main.options_from_args(parsed)
    return {"args": parsed, "options": options, "source": source,
            "no_effect": [f.name for f in no_effect_flags(fs, parsed)]}


def _check(objects: dict[str, Any], args: list[str], path: str, expected: Any) -> None:
    flag = args[0].lstrip("-").partition("=")[0]
    if path == NO_EFFECT:
        assert objects["no_effect"] == [flag], objects["no_effect"]
    else:
        assert _look(path, objects) == expected
        assert flag == "D" or flag not in objects["no_effect"]


@pytest.mark.parametrize(("args", "path", "expected"), KVSTOREMESH_FLAGS,
                         ids=[" ".join(r[0]) for r in KVSTOREMESH_FLAGS])
def test_every_kvstoremesh_flag_is_parsed(args: list[str], path: str, expected: Any) -> None:
    _check(_parse_kvstoremesh([*KVM_BASE, *args]), args, path, expected)


@pytest.mark.parametrize(("args", "path", "expected"), CLUSTERMESH_FLAGS,
                         ids=[" ".join(r[0]) for r in CLUSTERMESH_FLAGS])
def test_every_clustermesh_flag_is_parsed(args: list[str], path: str, expected: Any) -> None:
    _check(_parse_clustermesh([*API_BASE, *args]), args, path, expected)


def test_defaults_are_upstreams() -> None:
    o = _parse_kvstoremesh(KVM_BASE)["options"]
    assert (o.health_port, o.api_serve_addr, o.per_cluster_ready_timeout,
            o.global_ready_timeout, o.cache_ttl, o.enable_heartbeat,
            o.disable_drain_on_disconnection, o.max_consecutive_quorum_errors,
            o.max_connected_clusters, o.controller_group_metrics, o.debug) == (
        9880, "localhost:9889", 15.0, 600.0, 0.0, False, False, 2, 255, (), False)
    bare = kvstoremesh_main.build_parser().parse([], env={})
    assert (bare.cluster_name, bare.cluster_id) == ("default", 0)
    api = _parse_clustermesh(API_BASE)["options"]
    assert (api.health_port, api.cluster_users_enabled, api.cluster_users_config_path,
            api.default_global_namespace, api.mcs_api, api.cilium_endpoint_slices) == (
        9880, False, Path("/var/lib/cilium/etcd-config/users.yaml"), True, False, False)
    # The hidden flag works but is not advertised.
    assert "--disable-drain-on-disconnection" not in kvstoremesh_main.build_parser().usage()


ETCDINIT_FLAGS: list[tuple[list[str], str, Any]] = [
    (["--etcd-data-dir=/d"], "etcd_data_dir", "/d"),
    (["--etcd-initial-cluster-token=uid-1"], "etcd_initial_cluster_token", "uid-1"),
    (["--etcd-cluster-name=m1"], "etcd_cluster_name", "m1"),
    (["--cluster-name=c1"], "cluster_name", "c1"),
    (["--timeout=30s"], "timeout", 30.0),
    (["--debug"], "debug", True),
]


@pytest.mark.parametrize(("args", "dest", "expected"), ETCDINIT_FLAGS,
                         ids=[r[0][0] for r in ETCDINIT_FLAGS])
def test_every_etcdinit_flag_is_parsed(args: list[str], dest: str, expected: Any) -> None:
    fs = etcdinit.build_parser()
    assert isinstance(fs, FlagSet)
    assert getattr(fs.parse(args, env={}), dest) == expected
    defaults = fs.parse([], env={})
    assert (defaults.etcd_data_dir, defaults.etcd_initial_cluster_token,
            defaults.etcd_cluster_name, defaults.cluster_name, defaults.timeout,
            defaults.debug) == ("/var/run/etcd", "clustermesh-apiserver",
                                "clustermesh-apiserver", "default", 120.0, False)


def test_the_charts_arguments_are_accepted() -> None:
    """Facts §2.2-2.5 verbatim, after the kubelet's $(VAR) expansion."""
    init = etcdinit.build_parser().parse(
        ["--debug", "--etcd-cluster-name=clustermesh-apiserver",
         "--etcd-initial-cluster-token=6b1c-uid", "--etcd-data-dir=/var/run/etcd"],
        env={"CILIUM_CLUSTER_NAME": "c1", "INITIAL_CLUSTER_TOKEN": "6b1c-uid"})
    assert (init.cluster_name, init.etcd_initial_cluster_token) == ("c1", "6b1c-uid")

    config = "--kvstore-opt=etcd.config=/var/lib/cilium/etcd-config.yaml"
    api = _parse_clustermesh([
        "--debug", "--cluster-name=c1", "--cluster-id=1", config, "--kvstore-opt=etcd.qps=20",
        "--kvstore-opt=etcd.bootstrapQps=10000", "--max-connected-clusters=255",
        "--health-port=9880", "--cluster-users-enabled",
        "--cluster-users-config-path=/var/lib/cilium/etcd-config/users.yaml",
        "--prometheus-serve-addr=:9962", "--controller-group-metrics=all",
        "--clustermesh-enable-mcs-api", "--enable-cilium-endpoint-slice",
        "--clustermesh-default-global-namespace=true", "--enable-external-workloads=false"],
        env={"ENABLE_K8S_ENDPOINT_SLICE": "false"})  # unprefixed: not read, as upstream
    o = api["options"]
    assert (o.local_config, o.qps, o.bootstrap_qps, o.cluster_users_enabled, o.debug,
            o.controller_group_metrics, o.mcs_api) == (
        Path("/var/lib/cilium/etcd-config.yaml"), 20.0, 10000.0, True, True, ("all",), True)
    assert api["no_effect"] == ["enable-external-workloads"]

    kvm = _parse_kvstoremesh([
        "--debug", "--cluster-name=c1", "--cluster-id=1", config, "--kvstore-opt=etcd.qps=100",
        "--kvstore-opt=etcd.bootstrapQps=10000", "--kvstore-opt=etcd.maxInflight=10",
        "--clustermesh-config=/var/lib/cilium/clustermesh", "--max-connected-clusters=255",
        "--clustermesh-cache-ttl=0s", "--health-port=9881", "--prometheus-serve-addr=:9964",
        "--controller-group-metrics=all", "--enable-heartbeat=false"])
    o = kvm["options"]
    assert (o.qps, o.max_inflight, o.health_port, o.enable_heartbeat, o.cache_ttl) == (
        100.0, 10, 9881, False, 0.0)
    assert kvm["no_effect"] == [] and kvm["args"].positionals == []
    assert [c.name for c in apiserver_binary.COMMANDS] == [
        "clustermesh", "clustermesh-dbg", "etcdinit", "kvstoremesh", "kvstoremesh-dbg",
        "version"]


# ------------------------------------------------------------------ conventions


def test_env_binding() -> None:
    env = {"CILIUM_CLUSTER_NAME": "from-env", "CILIUM_CLUSTER_ID": "9",
           "CILIUM_KVSTORE_OPT": "etcd.config=/x,etcd.qps=20",
           "CILIUM_CLUSTERMESH_CONFIG": "/cfg", "CILIUM_ENABLE_HEARTBEAT": "true",
           "CILIUM_CONTROLLER_GROUP_METRICS": "a,b",
           # Kubernetes service links: not flags, ignored (no error for a URL value).
           "CILIUM_ENVOY_PORT": "tcp://10.96.0.10:9964", "CILIUM_AGENT_SERVICE_HOST": "x",
           "CILIUM_HEALTH_PORT": ""}  # empty: unset, as viper
    kvm = _parse_kvstoremesh([], env=env)
    o = kvm["options"]
    assert (o.cluster_name, o.cluster_id, o.local_config, o.qps, o.enable_heartbeat,
            o.controller_group_metrics, o.health_port) == (
        "from-env", 9, Path("/x"), 20.0, True, ("a", "b"), 9880)
    assert kvm["args"].from_env == {"cluster-name", "cluster-id", "kvstore-opt",
                                    "clustermesh-config", "enable-heartbeat",
                                    "controller-group-metrics"}
    # The flag wins; a map flag given on the command line replaces the env map.
    kvm = _parse_kvstoremesh(["--cluster-name=flag", "--kvstore-opt=etcd.config=/y"], env=env)
    assert (kvm["options"].cluster_name, kvm["options"].local_config, kvm["options"].qps) == (
        "flag", Path("/y"), 0.0)
    # JSON object form of a map variable.
    kvm = _parse_kvstoremesh(KVM_BASE[:3], env={"CILIUM_KVSTORE_OPT": '{"etcd.config": "/j"}'})
    assert kvm["options"].local_config == Path("/j")
    with pytest.raises(FlagError, match=r'invalid argument "abc" for "--cluster-id" flag '
                                        r"\(from CILIUM_CLUSTER_ID\): strconv.ParseUint"):
        kvstoremesh_main.build_parser().parse([], env={"CILIUM_CLUSTER_ID": "abc"})


def test_bool_syntax_as_pflag() -> None:
    fs = kvstoremesh_main.build_parser()
    for word in ("1", "t", "T", "TRUE", "true", "True"):
        assert fs.parse([f"--enable-heartbeat={word}"], env={}).enable_heartbeat is True
    for word in ("0", "f", "F", "FALSE", "false", "False"):
        assert fs.parse([f"--enable-heartbeat={word}"], env={}).enable_heartbeat is False
    # `--flag false`: the flag is true and `false` is an (ignored) positional word.
    parsed = fs.parse(["--enable-heartbeat", "false", "-D"], env={})
    assert (parsed.enable_heartbeat, parsed.debug, parsed.positionals) == (True, True, ["false"])
    with pytest.raises(FlagError, match=r'invalid argument "yes" for "--enable-heartbeat" '
                                        r'flag: strconv.ParseBool: parsing "yes"'):
        fs.parse(["--enable-heartbeat=yes"], env={})
    with pytest.raises(FlagError, match=r'invalid argument "x" for "-D, --debug" flag'):
        fs.parse(["-D=x"], env={})
    # Non-bool flags take the next word; no abbreviations; -- ends the flags.
    parsed = fs.parse(["--cluster-name", "--x", "--", "--cluster-id=3"], env={})
    assert (parsed.cluster_name, parsed.positionals) == ("--x", ["--cluster-id=3"])
    with pytest.raises(FlagError, match=r"^unknown flag: --cluster-nam$"):
        fs.parse(["--cluster-nam=c1"], env={})
    with pytest.raises(FlagError, match=r"^flag needs an argument: --cluster-name$"):
        fs.parse(["--cluster-name"], env={})
    with pytest.raises(FlagError, match=r"^unknown shorthand flag: 'q' in -q$"):
        fs.parse(["-q"], env={})
    with pytest.raises(FlagError, match=r"etcd.config must be formatted as key=value"):
        fs.parse(["--kvstore-opt=etcd.config"], env={})
    # One `=`: one pair, commas kept (pflag's stringToString).
    assert fs.parse(["--kvstore-opt=etcd.address=a,b"], env={}).kvstore_opt == {
        "etcd.address": "a,b"}


@pytest.mark.parametrize(("argv", "stderr_start"), [
    (["kvstoremesh", "--bogus"], "Error: unknown flag: --bogus\nUsage:\n"
                                 "  clustermesh-apiserver kvstoremesh [flags]\n"),
    (["clustermesh", "--cluster-id=x"],
     'Error: invalid argument "x" for "--cluster-id" flag: strconv.ParseUint: parsing "x": '
     "invalid syntax\nUsage:\n"),
    (["kvstoremesh", "--clustermesh-conf=/x"], "Error: unknown flag: --clustermesh-conf\n"),
    (["bogus"], 'Error: unknown command "bogus" for "clustermesh-apiserver"\n'
                "Run 'clustermesh-apiserver --help' for usage.\n"),
    (["kvstoremesh-dbg", "stat"],
     'Error: unknown command "stat" for "clustermesh-apiserver kvstoremesh-dbg"\n'),
    (["--bogus"], "Error: unknown flag: --bogus\nUsage:\n"),
    (["kvstoremesh-dbg", "status", "-o", "xml"],
     'Error: invalid argument "xml" for "-o, --output" flag: unsupported output format'),
])
def test_refusals_print_cobras_text_and_exit_1(
        capsys: pytest.CaptureFixture[str], argv: list[str], stderr_start: str) -> None:
    assert apiserver_binary.main(argv) == 1
    out, err = capsys.readouterr()
    assert err.startswith(stderr_start), err
    assert out == ""


def test_help_and_version_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert apiserver_binary.main(["kvstoremesh", "--help"]) == 0
    out = capsys.readouterr().out
    assert "Usage:\n  clustermesh-apiserver kvstoremesh [flags]" in out
    assert "  -D, --debug " in out and "--kvstore-opt stringToString" in out
    assert apiserver_binary.main(["clustermesh", "-h"]) == 0
    assert "--cluster-users-enabled" in capsys.readouterr().out
    assert apiserver_binary.main([]) == 0
    assert "Available Commands:" in capsys.readouterr().out
    assert apiserver_binary.main(["version"]) == 0
    assert re.fullmatch(r"\S+ clustermesh \(.*\) python 3\.\d+\.\d+ \S+/\S+\n",
                        capsys.readouterr().out)


def test_no_effect_flags_are_named_in_one_line(caplog: pytest.LogCaptureFixture) -> None:
    fs = apiserver_main.build_parser()
    parsed = fs.parse(["--pprof", "--enable-gops=false", "--cluster-users-enabled"],
                      env={"CILIUM_KVSTORE_LEASE_TTL": "1m"})
    with caplog.at_level(logging.INFO):
        log_no_effect(fs, parsed, logging.getLogger("t"))
    [record] = caplog.records
    assert record.getMessage().startswith("Flags accepted without effect")
    named = re.findall(r"--([a-z0-9-]+) \(", record.getMessage())
    assert named == ["kvstore-lease-ttl", "enable-gops", "pprof"]
    caplog.clear()
    log_no_effect(fs, fs.parse([], env={}), logging.getLogger("t"))
    assert caplog.records == []


# ------------------------------------------------------------------ real processes


async def test_kvstoremesh_process_configured_from_env(tmp_path: Path,
                                                       etcd: EtcdServer) -> None:
    config = etcd.client_config(tmp_path / "etcd.yaml")
    (tmp_path / "clustermesh").mkdir()
    health, api = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "CILIUM_CLUSTER_NAME": "c1",
           "CILIUM_CLUSTER_ID": "5", "CILIUM_KVSTORE_OPT": f"etcd.config={config}",
           "CILIUM_CLUSTERMESH_CONFIG": str(tmp_path / "clustermesh"),
           "CILIUM_HEALTH_PORT": str(health), "CILIUM_API_SERVE_ADDR": f"127.0.0.1:{api}",
           "CILIUM_ENVOY_PORT": "tcp://10.96.0.10:9964", "CILIUM_PPROF": "true"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clustermesh_tools.apiserver_binary", "kvstoremesh",
        "--enable-gops=false", "--validate-remote-data", "false", cwd=REPO, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    seen: list[str] = []
    try:
        async with asyncio.timeout(30):
            while not any("Ignoring positional" in line for line in seen):
                seen.append((await proc.stderr.readline()).decode())
                assert seen[-1], "".join(seen)
            while True:  # ready, on the ports the environment named
                try:
                    with await asyncio.to_thread(urllib.request.urlopen,
                                                 f"http://127.0.0.1:{health}/readyz") as r:
                        assert r.status == 200
                        break
                except OSError:
                    await asyncio.sleep(0.1)
            assert fetch(f"127.0.0.1:{api}").models == []
        proc.send_signal(signal.SIGTERM)
        _, rest = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0
    log_text = "".join(seen) + rest.decode()
    [line] = [x for x in log_text.splitlines() if "accepted without effect" in x]
    assert re.findall(r"--([a-z0-9-]+) \(", line) == ["enable-gops", "pprof"]
    assert "Ignoring positional arguments false" in log_text
