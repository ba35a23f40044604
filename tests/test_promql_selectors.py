"""tests/harness/promql.py: the vector selectors of the expressions our rules and
dashboards use, and nothing that is not one."""

from __future__ import annotations

import pytest
from harness.promql import selectors

CASES = [
    ('histogram_quantile(0.99, sum by (cluster, target_cluster, le) '
     '(rate(cilium_kvstoremesh_propagation_lag_seconds_bucket{cluster=~"$cluster"}[5m])))',
     ['cilium_kvstoremesh_propagation_lag_seconds_bucket{cluster=~"$cluster"}']),
    ('(x_not_after{role="ca"} - time()) / 86400 < 14', ['x_not_after{role="ca"}']),
    ('sum(up{job="a,b}"}) without (instance) == 0 and on (cluster) other_metric > bool 1',
     ['up{job="a,b}"}', "other_metric"]),
    ('{__name__=~"etcd_.*"} offset 5m', ['{__name__=~"etcd_.*"}']),
    ("a unless b or c", ["a", "b", "c"]),
    ("increase(errors_total[10m]) > 0", ["errors_total"]),
    ('count by (cluster) (m{a="x"}) group_left (kind) n', ['m{a="x"}', "n"]),
]


@pytest.mark.parametrize(("expr", "expected"), CASES)
def test_selectors(expr: str, expected: list[str]) -> None:
    assert selectors(expr) == expected
