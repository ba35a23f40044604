"""The Prometheus alert rules (``helm/clustermesh/files/alerts.yaml``), checked with promtool.

* ``promtool check rules`` accepts the file;
* ``promtool test rules tests/alerts_test.yaml`` passes: every rule has a case where it
  fires (labels and annotations expanded) and one where it does not (checked here too);
* each rule names the cluster (``{{ $labels.cluster }}``, the target label the chart's
  ServiceMonitor sets) in its summary and description, says what to run, and has a
  severity;
* every series a rule reads is one the daemons export: the names come from the
  daemons' own metric registries (KVStoreMesh's and the apiserver's), not a list here.

The PrometheusRule that embeds the file is tested with the chart (tests/test_helm_chart.py).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness.promql import selectors

from clustermesh.metrics import KVStoreMetrics
from kvstoremesh.metrics import MeshMetrics

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "helm" / "clustermesh" / "files" / "alerts.yaml"
UNIT_TESTS = Path(__file__).resolve().parent / "alerts_test.yaml"
#: What each alert's description must tell the person on call to run (one of them).
COMMANDS = ("clustermesh troubleshoot", "kvstoremesh-dbg status")


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool") or (
        "/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None)
    if found is None:
        pytest.skip("promtool is not installed (apt-get install prometheus, or a "
                    "Prometheus release tarball): the rules cannot be checked")
    return found


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_promtool_check_rules(promtool: str) -> None:
    proc = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in proc.stdout, proc.stdout
    assert "WARNING" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_promtool_unit_tests(promtool: str) -> None:
    proc = subprocess.run([promtool, "test", "rules", str(UNIT_TESTS)], capture_output=True,
                          text=True, timeout=120, check=False, cwd=UNIT_TESTS.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout, proc.stdout


def test_unit_tests_cover_every_rule_firing_and_not() -> None:
    """Each alert has a case with expected alerts and one expecting none (pending, or
    resolved), and the unit tests read the shipped file."""
    unit = yaml.safe_load(UNIT_TESTS.read_text())
    assert [(UNIT_TESTS.parent / f).resolve() for f in unit["rule_files"]] == [RULES]
    fires: set[str] = set()
    quiet: set[str] = set()
    for test in unit["tests"]:
        for case in test["alert_rule_test"]:
            (fires if case.get("exp_alerts") else quiet).add(case["alertname"])
            for alert in case.get("exp_alerts") or ():
                # Annotations are compared: a case without them would fail anyway,
                # this says why.
                assert alert.get("exp_annotations"), case
    names = {rule["alert"] for rule in alert_rules()}
    assert names - fires == set(), "rules never seen firing"
    assert names - quiet == set(), "rules never seen not firing"
    assert fires | quiet <= names, "tests of rules that do not exist"


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_rule_names_the_cluster_and_what_to_run(rule: dict[str, Any]) -> None:
    annotations = rule["annotations"]
    assert set(annotations) >= {"summary", "description"}
    for text in (annotations["summary"], annotations["description"]):
        assert "{{ $labels.cluster }}" in text
    assert any(command in annotations["description"] for command in COMMANDS)
    assert rule["labels"]["severity"] in {"warning", "critical"}


class _EmptyMesh:
    """Enough of :class:`kvstoremesh.metrics.MeshState` for the families to be listed."""

    revocations: Mapping[str, int] = {}

    def remotes_status(self) -> dict[str, Any]:
        return {}

    def problems(self, remotes: Mapping[str, Any]) -> list[Any]:
        return []

    def queue_sizes(self) -> dict[Any, int]:
        return {}


def exported_series() -> set[str]:
    """The sample names the two daemons' registries can export."""
    kvstoremesh = MeshMetrics()
    kvstoremesh.attach(_EmptyMesh())
    apiserver = KVStoreMetrics("cilium_clustermesh_apiserver")
    names: set[str] = set()
    for metrics in (kvstoremesh, apiserver):
        metrics.export_health(ready=lambda: (True, []), etcd_configs=dict)
        names |= set(_sample_names(metrics))
    return names


def _sample_names(metrics: KVStoreMetrics) -> Iterator[str]:
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                "gauge": ("",), "summary": ("_sum", "_count", "")}
    for family in metrics.registry.collect():
        for suffix in suffixes.get(family.type, ("",)):
            yield family.name + suffix


def test_rules_read_series_the_daemons_export() -> None:
    exported = exported_series()
    missing = {}
    for rule in alert_rules():
        for selector in selectors(rule["expr"]):
            name = selector.split("{", 1)[0]
            if name not in exported:
                missing.setdefault(rule["alert"], []).append(name)
    assert not missing, missing
