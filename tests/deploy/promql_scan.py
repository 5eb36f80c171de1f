"""Pulls the metric names and label names out of a PromQL expression.

Not a PromQL parser (promtool checks the syntax): a tokenizer plus the few rules that tell a
metric name from a function, a keyword or a label. It understands Grafana's `$variables`, so
dashboard expressions can be read as they are stored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<str>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<var>\$\{[^}]*\}|\$\w+)
  | (?P<num>\d+(?:\.\d*)?(?:[eE][+-]?\d+)?[a-zA-Z]*|\.\d+)
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=,(){}\[\]@])
    """,
    re.VERBOSE,
)

# Keywords followed by a parenthesised list of label names.
_GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
# Aggregation operators, which may be followed by `by (...)` rather than by "(".
_AGGREGATIONS = frozenset(
    {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values"}
    | {"bottomk", "topk", "quantile", "limitk", "limit_ratio"}
)
# Identifiers that are neither metrics nor functions.
_KEYWORDS = (
    _GROUPING
    | _AGGREGATIONS
    | {"and", "or", "unless", "bool", "offset", "Inf", "NaN", "inf", "nan"}
)
_MATCH_OPS = frozenset({"=", "!=", "=~", "!~"})


@dataclass
class Names:
    metrics: set[str] = field(default_factory=set)
    labels: set[str] = field(default_factory=set)


def _tokens(expr: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:
            raise ValueError(f"cannot read PromQL at {expr[pos:]!r}")
        kind = m.lastgroup
        assert kind is not None
        if kind != "ws":
            out.append((kind, m.group()))
        pos = m.end()
    return out


def _close(tokens: list[tuple[str, str]], start: int, closing: str) -> int:
    """Index of the first `closing` token at or after start."""
    for j in range(start, len(tokens)):
        if tokens[j][1] == closing:
            return j
    raise ValueError(f"unbalanced PromQL: no {closing!r}")


def scan(expr: str) -> Names:
    """Metric names selected, and label names matched or grouped on, in expr."""
    toks = _tokens(expr)
    names = Names()
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        nxt = toks[i + 1][1] if i + 1 < len(toks) else ""
        if text == "{":
            # Label matchers: `name op "value"` separated by commas.
            end = _close(toks, i, "}")
            for j in range(i + 1, end):
                if toks[j][0] == "ident" and toks[j + 1][1] in _MATCH_OPS:
                    names.labels.add(toks[j][1])
            i = end + 1
        elif text == "[":
            # A range or subquery duration: nothing named in there.
            i = _close(toks, i, "]") + 1
        elif kind == "ident" and text in _GROUPING and nxt == "(":
            end = _close(toks, i, ")")
            names.labels.update(t for k, t in toks[i + 2 : end] if k == "ident")
            i = end + 1
        elif kind == "ident" and nxt != "(" and text not in _KEYWORDS:
            names.metrics.add(text)
            i += 1
        else:
            # Functions and aggregations (an identifier before "("), numbers, strings,
            # Grafana variables and operators.
            i += 1
    names.labels.discard("__name__")
    return names


_LEGEND_LABEL = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")


def legend_labels(legend: str) -> set[str]:
    """Label names a Grafana legend format such as `{{status}}` refers to."""
    return set(_LEGEND_LABEL.findall(legend))


# What Grafana substitutes before a query reaches Prometheus, and a stand-in that keeps the
# expression valid PromQL, so promtool can check the dashboard's queries.
GRAFANA_STAND_INS = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "1h",
}


def for_prometheus(expr: str) -> str:
    """expr with Grafana's variables replaced by values Prometheus accepts."""
    for var, value in GRAFANA_STAND_INS.items():
        expr = expr.replace(var, value)
    # Multi-value template variables become regexes inside =~ matchers.
    return re.sub(r"\$\{?\w+\}?", ".*", expr)
