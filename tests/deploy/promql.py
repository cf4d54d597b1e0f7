"""The metric names a PromQL expression reads, for checking dashboards and alert rules against farm.metrics.

Not a PromQL parser: a tokenizer that removes everything that is not a metric name (string literals, label
matchers, range and subquery brackets, grouping label lists, offsets and @ modifiers, numbers, Grafana
variables, function names and keywords) and returns the identifiers left. Any identifier that survives is taken
for a metric name, so a misspelt metric or an unknown function is reported rather than ignored.
"""

from __future__ import annotations

import re

# Every function of PromQL (Prometheus 2.x and 3.x), including the experimental ones.
# fmt: off
FUNCTIONS = frozenset((
    "abs", "absent", "absent_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh", "avg_over_time",
    "ceil", "changes", "clamp", "clamp_max", "clamp_min", "cos", "cosh", "count_over_time", "day_of_month",
    "day_of_week", "day_of_year", "days_in_month", "deg", "delta", "deriv", "double_exponential_smoothing",
    "exp", "floor", "histogram_avg", "histogram_count", "histogram_fraction", "histogram_quantile",
    "histogram_stddev", "histogram_stdvar", "histogram_sum", "holt_winters", "hour", "idelta", "increase",
    "info", "irate", "label_join", "label_replace", "last_over_time", "ln", "log10", "log2", "mad_over_time",
    "max_over_time", "min_over_time", "minute", "month", "pi", "predict_linear", "present_over_time",
    "quantile_over_time", "rad", "rate", "resets", "round", "scalar", "sgn", "sin", "sinh", "sort",
    "sort_by_label", "sort_by_label_desc", "sort_desc", "sqrt", "stddev_over_time", "stdvar_over_time",
    "sum_over_time", "tan", "tanh", "time", "timestamp", "vector", "year",
))
AGGREGATIONS = frozenset((
    "avg", "bottomk", "count", "count_values", "group", "limit_ratio", "limitk", "max", "min", "quantile",
    "stddev", "stdvar", "sum", "topk",
))
KEYWORDS = frozenset((  # case-insensitive in PromQL
    "and", "or", "unless", "bool", "atan2", "offset", "inf", "nan",
))
# fmt: on

_STRING = re.compile(r""""(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`""")
_NAME_MATCHER = re.compile(r"""__name__\s*=\s*("(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*')""")
_GRAFANA_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+|\[\[\w+\]\]")
_LABEL_MATCHERS = re.compile(r"\{[^{}]*\}")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE)
_BARE_GROUP_MODIFIER = re.compile(r"\b(?:group_left|group_right)\b", re.IGNORECASE)
_OFFSET = re.compile(r"\boffset\s+-?[0-9a-zA-Z]+", re.IGNORECASE)
_AT = re.compile(r"@\s*(?:start\s*\(\s*\)|end\s*\(\s*\)|[0-9.eE+-]+)")
_NUMBER = re.compile(r"(?<![\w:])(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)")
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """The metric names ``expr`` selects (every identifier that is not PromQL syntax)."""
    names = {m.group(1)[1:-1] for m in _NAME_MATCHER.finditer(expr)}  # {__name__="x"} selects x
    text = _STRING.sub(" ", expr)
    text = _GRAFANA_VARIABLE.sub(" ", text)
    text = _LABEL_MATCHERS.sub(" ", text)
    while _BRACKETS.search(text):  # [5m], [$__rate_interval], subqueries [1h:5m]
        text = _BRACKETS.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _BARE_GROUP_MODIFIER.sub(" ", text)
    text = _OFFSET.sub(" ", text)
    text = _AT.sub(" ", text)
    text = _NUMBER.sub(" ", text)
    for token in _IDENTIFIER.findall(text):
        if token in FUNCTIONS or token in AGGREGATIONS or token.lower() in KEYWORDS:
            continue
        names.add(token)
    return names


_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(?P<expr>.+),\s*)?(?P<label>[A-Za-z_]\w*)\s*\)\s*$", re.DOTALL)
_QUERY_RESULT = re.compile(r"^\s*query_result\((?P<expr>.+)\)\s*$", re.DOTALL)


def grafana_variable_expr(query: str) -> str | None:
    """The PromQL inside a Grafana Prometheus variable query (``label_values(EXPR, label)``, ``query_result(EXPR)``);
    None for ``label_values(label)``, which reads no metric."""
    if m := _LABEL_VALUES.match(query):
        return m.group("expr")
    if m := _QUERY_RESULT.match(query):
        return m.group("expr")
    raise ValueError(f"not a Grafana Prometheus variable query this check understands: {query!r}")
