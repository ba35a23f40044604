"""The vector selectors of a PromQL expression, for checking them against a real Prometheus.

A dashboard or an alert rule with a typo'd metric name or a label that does not exist
evaluates to "no data" forever, silently.  :func:`selectors` returns every vector
selector of an expression (``name{matchers}``, or ``{matchers}`` alone) so that a test
can ask a Prometheus that scraped the real daemons whether each one matches a series
(``/api/v1/series?match[]=...``).  A small tokenizer, not a full PromQL parser: it knows
what is *not* a selector — function names (followed by ``(``), aggregation modifiers and
their label lists (``by (a, b)``, ``without (...)``, ``on``/``ignoring``/``group_left``/
``group_right`` lists), keywords (``and``, ``or``, ``unless``, ``bool``, ``offset``),
string literals, numbers and durations (``[5m]``, ``offset 5m``) — and that is all
our expressions use.
"""

from __future__ import annotations

import re

_TOKEN = re.compile(r"""
    (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<range>\[[^\]]*\])
  | (?P<braces>\{(?:[^}"']|"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')*\})
  | (?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<number>[0-9][0-9a-zA-Z.]*)  # 0.99, 1e5, and durations: 5m, 1h30m
  | (?P<other>\S)
""", re.VERBOSE)
_KEYWORDS = {"and", "or", "unless", "bool", "offset"}
_LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
# Aggregations may take their label list before the parenthesis: ``sum by (a) (x)``.
_AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count",
                 "count_values", "bottomk", "topk", "quantile", "limitk", "limit_ratio"}


def selectors(expr: str) -> list[str]:
    """Every vector selector of ``expr``, in order, as written (``name{...}``)."""
    tokens = [(m.lastgroup, m.group()) for m in _TOKEN.finditer(expr)]
    out: list[str] = []
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1] if i + 1 < len(tokens) else (None, "")
        if kind == "name" and text in _LABEL_LISTS:
            i += 1
            if i < len(tokens) and tokens[i][1] == "(":  # skip the label list
                while i < len(tokens) and tokens[i][1] != ")":
                    i += 1
            i += 1
            continue
        if kind == "name" and text in _AGGREGATIONS and following[1] in _LABEL_LISTS:
            i += 1
            continue
        if kind == "name" and text not in _KEYWORDS and following[1] != "(":
            if following[0] == "braces":
                out.append(text + following[1])
                i += 2
                continue
            out.append(text)
        elif kind == "braces":
            out.append(text)
        i += 1
    return out
