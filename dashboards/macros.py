"""The Grafana ClickHouse macros the dashboards use, expanded as the plugin does.

The operator overview page runs the dashboards' own queries through this, and
the tests run every panel query through it against both backends.
"""

from __future__ import annotations

import re

_TENANT = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")  # the tenant id rule of the tenants file
_TIME_FILTER = re.compile(r"\$__timeFilter\((\w+)\)")


def expand(sql: str, start: int, end: int, tenants: list[str]) -> str:
    """$__timeFilter(col) and ${tenant:singlequote}; anything else left is an error."""
    for t in tenants:
        if not _TENANT.match(t):
            raise ValueError(f"not a tenant id: {t!r}")
    sql = _TIME_FILTER.sub(
        lambda m: f"{m[1]} >= toDateTime({int(start)}) AND {m[1]} <= toDateTime({int(end)})", sql)
    # No tenant at all must match nothing, not be a syntax error.
    sql = sql.replace("${tenant:singlequote}", ",".join(f"'{t}'" for t in tenants) or "''")
    if "$" in sql:
        raise ValueError(f"unexpanded macro in: {sql}")
    return sql
