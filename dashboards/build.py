"""Writes the Grafana dashboards of dashboards/ (run ``python -m dashboards.build``).

ClickHouse queries must run on 18.16 as well as current releases: no
$__timeInterval (it expands to toStartOfInterval), no window functions or
CTEs. Percentiles come from the histogram buckets with array functions.
Every table is read with FINAL so that replayed windows count once.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from dashboards import DIR

CH = {"type": "grafana-clickhouse-datasource", "uid": "${clickhouse}"}
PROM = {"type": "prometheus", "uid": "${prometheus}"}
TENANTS = "tenant IN (${tenant:singlequote})"
WHERE = f"$__timeFilter(window_start) AND {TENANTS}"
MINUTE = "toStartOfMinute(window_start)"
OVERFLOW_LABEL = "if(le < 0, 'fewer than k', if(le >= 1e15, '+Inf', toString(le)))"


def _counts_by(dimension: str, extra: str = "") -> str:
    return (f"SELECT {MINUTE} AS time, {dimension}, sum(messages) AS n "
            f"FROM postwarden.stats_counts FINAL WHERE {WHERE}{extra} "
            f"GROUP BY time, {dimension} HAVING n > 0 ORDER BY time")


def _distribution(metric: str) -> str:
    return (f"SELECT {OVERFLOW_LABEL} AS bucket, sum(messages) AS n "
            f"FROM postwarden.stats_histograms FINAL WHERE {WHERE} AND metric = '{metric}' "
            f"GROUP BY le HAVING n > 0 ORDER BY le")


def _percentiles(metric: str) -> str:
    """Upper bound of the bucket holding each quantile, per minute."""
    sorted_buckets = "arraySort(groupArray((le, n)))"
    inner = (f"SELECT {MINUTE} AS time, le, sum(messages) AS n FROM postwarden.stats_histograms FINAL "
             f"WHERE {WHERE} AND metric = '{metric}' AND le >= 0 GROUP BY time, le")
    per_minute = (f"SELECT time, arrayMap(b -> tupleElement(b, 1), {sorted_buckets}) AS les, "
                  f"arrayCumSum(arrayMap(b -> tupleElement(b, 2), {sorted_buckets})) AS cum, "
                  f"sum(n) AS total FROM ({inner}) GROUP BY time")
    quantiles = ", ".join(
        f"arrayElement(les, arrayFirstIndex(c -> c >= {q} * total, cum)) AS p{int(q * 100)}"
        for q in (0.5, 0.95, 0.99))
    return f"SELECT time, {quantiles} FROM ({per_minute}) WHERE total > 0 ORDER BY time"


def _ch_target(sql: str, fmt: str) -> dict[str, Any]:
    # format 0 = time series, 1 = table (grafana-clickhouse-datasource)
    return {"refId": "A", "datasource": CH, "editorType": "sql", "queryType": fmt,
            "format": 0 if fmt == "timeseries" else 1, "rawSql": sql}


def _panel(pid: int, kind: str, title: str, description: str, grid: tuple[int, int, int, int],
           targets: list[dict[str, Any]], datasource: dict[str, str], unit: str = "short",
           options: dict[str, Any] | None = None) -> dict[str, Any]:
    x, y, w, h = grid
    panel = {"id": pid, "type": kind, "title": title, "description": description,
             "datasource": datasource, "gridPos": {"h": h, "w": w, "x": x, "y": y},
             "fieldConfig": {"defaults": {"unit": unit}, "overrides": []}, "targets": targets}
    if options:
        panel["options"] = options
    return panel


def _ch(pid: int, kind: str, title: str, description: str, grid: tuple[int, int, int, int],
        sql: str, unit: str = "short", options: dict[str, Any] | None = None) -> dict[str, Any]:
    fmt = "timeseries" if kind == "timeseries" else "table"
    return _panel(pid, kind, title, description, grid, [_ch_target(sql, fmt)], CH, unit, options)


def _prom(pid: int, title: str, description: str, grid: tuple[int, int, int, int],
          exprs: list[tuple[str, str]], unit: str = "short") -> dict[str, Any]:
    targets = [{"refId": chr(65 + i), "datasource": PROM, "expr": e, "legendFormat": legend}
               for i, (e, legend) in enumerate(exprs)]
    return _panel(pid, "timeseries", title, description, grid, targets, PROM, unit)


def _dashboard(uid: str, title: str, description: str, variables: list[dict[str, Any]],
               panels: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "uid": uid, "title": title, "description": description, "tags": ["postwarden"],
        "timezone": "utc", "editable": True, "graphTooltip": 1, "schemaVersion": 41,
        "version": 1, "refresh": "1m", "time": {"from": "now-6h", "to": "now"},
        "annotations": {"list": []}, "templating": {"list": variables}, "panels": panels,
    }


def _datasource_variable(name: str, label: str, plugin: str) -> dict[str, Any]:
    return {"name": name, "label": label, "type": "datasource", "query": plugin}


TENANT_VARIABLE = {
    "name": "tenant", "label": "Tenant", "type": "query", "datasource": CH,
    "query": "SELECT DISTINCT tenant FROM postwarden.stats_counts ORDER BY tenant",
    "refresh": 2, "multi": True, "includeAll": True,
    "current": {"text": ["All"], "value": ["$__all"]},
}


def mail_flow() -> dict[str, Any]:
    pie = {"reduceOptions": {"calcs": ["sum"], "values": True}, "pieType": "donut"}
    panels = [
        _ch(1, "stat", "Messages", "Recipients processed in the range.", (0, 0, 6, 4),
            f"SELECT sum(messages) AS messages FROM postwarden.stats_counts FINAL WHERE {WHERE}"),
        _ch(2, "stat", "Quarantined share", "Share of recipients held in quarantine.", (6, 0, 6, 4),
            "SELECT sumIf(messages, action = 'quarantine') / greatest(sum(messages), 1) AS share "
            f"FROM postwarden.stats_counts FINAL WHERE {WHERE}", unit="percentunit"),
        _ch(3, "stat", "Released from quarantine", "Messages users released.", (12, 0, 6, 4),
            "SELECT sumIf(messages, action = 'release') AS released "
            f"FROM postwarden.stats_counts FINAL WHERE {WHERE}"),
        _ch(4, "stat", "Virus detections", "Recipients of mail with a virus.", (18, 0, 6, 4),
            "SELECT sumIf(messages, verdict = 'virus') AS viruses "
            f"FROM postwarden.stats_counts FINAL WHERE {WHERE}"),
        _ch(5, "timeseries", "Mail flow by action",
            "Recipients per minute by action; 'other' holds cells below k.", (0, 4, 16, 8),
            _counts_by("action")),
        _ch(6, "piechart", "Verdict mix", "Recipients by verdict over the range.", (16, 4, 8, 8),
            "SELECT verdict, sum(messages) AS n FROM postwarden.stats_counts FINAL "
            f"WHERE {WHERE} GROUP BY verdict HAVING n > 0 ORDER BY n DESC", options=pie),
        _ch(7, "timeseries", "Spam and virus trend", "Spam and virus recipients per minute.",
            (0, 12, 12, 8), _counts_by("verdict", " AND verdict IN ('spam', 'virus')")),
        _ch(8, "barchart", "Virus detections by signature family",
            "Families seen at least k times per window; the rest is 'other'.", (12, 12, 12, 8),
            "SELECT family, sum(messages) AS n FROM postwarden.stats_virus_families FINAL "
            f"WHERE {WHERE} GROUP BY family HAVING n > 0 ORDER BY n DESC"),
        _ch(9, "timeseries", "Quarantine and releases",
            "Recipients quarantined and messages released per minute.", (0, 20, 12, 8),
            _counts_by("action", " AND action IN ('quarantine', 'release')")),
        _ch(10, "timeseries", "End-to-end latency percentiles",
            "From SMTP acceptance to the routing decision (bucket upper bounds).", (12, 20, 12, 8),
            _percentiles("latency_ms"), unit="ms"),
        _ch(11, "barchart", "Spam score distribution", "Recipients per spam score bucket (0..100).",
            (0, 28, 12, 8), _distribution("spam_score")),
        _ch(12, "barchart", "Message size distribution", "Recipients per size bucket (bytes).",
            (12, 28, 12, 8), _distribution("size_bytes")),
        _ch(13, "barchart", "Messages per tenant", "Recipients per tenant and verdict.",
            (0, 36, 24, 8),
            "SELECT tenant, sumIf(messages, verdict = 'clean') AS clean, "
            "sumIf(messages, verdict = 'spam') AS spam, sumIf(messages, verdict = 'virus') AS virus, "
            "sumIf(messages, verdict NOT IN ('clean', 'spam', 'virus')) AS other "
            f"FROM postwarden.stats_counts FINAL WHERE {WHERE} GROUP BY tenant ORDER BY tenant"),
    ]
    return _dashboard(
        "postwarden-mail-flow", "Postwarden mail flow",
        "Aggregate, k-anonymous mail statistics from ClickHouse, per tenant (tenant variable). "
        "No addresses, IPs, subjects or message ids exist in these tables.",
        [_datasource_variable("clickhouse", "ClickHouse", "grafana-clickhouse-datasource"),
         TENANT_VARIABLE], panels)


def pipeline_health() -> dict[str, Any]:
    rate = "[5m]"
    panels = [
        _prom(1, "Accepted and routed", "Messages accepted by ingest, recipients routed per second.",
              (0, 0, 12, 8), [(f"sum(rate(postwarden_ingest_messages_total{rate}))", "accepted"),
                              (f"sum by (action) (rate(postwarden_routed_total{rate}))", "{{action}}")],
              unit="ops"),
        _prom(2, "Produce latency", "SMTP DATA end to broker acknowledgement.", (12, 0, 12, 8),
              [(f"histogram_quantile({q}, sum by (le) (rate(postwarden_ingest_produce_seconds_bucket{rate})))",
                f"p{int(q * 100)}") for q in (0.5, 0.95, 0.99)], unit="s"),
        _prom(3, "Stats consumer lag", "mail.events records not yet read by the stats windows.",
              (0, 8, 12, 8), [("sum(postwarden_stats_consumer_lag)", "lag"),
                              ("sum(postwarden_stats_open_windows)", "open windows")]),
        _prom(4, "Errors", "Rejected SMTP commands, invalid records, late events, failed writes.",
              (12, 8, 12, 8),
              [(f"sum by (reason) (rate(postwarden_ingest_rejects_total{rate}))", "reject {{reason}}"),
               (f"sum(rate(postwarden_score_invalid_records_total{rate}))", "invalid inbound"),
               (f"sum(rate(postwarden_stats_invalid_events_total{rate}))", "invalid events"),
               (f"sum(rate(postwarden_stats_late_events_total{rate}))", "late events"),
               (f"sum(rate(postwarden_stats_write_errors_total{rate}))", "ClickHouse write errors")],
              unit="ops"),
        _prom(5, "Analytics throughput", "Events into windows, windows emitted, rows written.",
              (0, 16, 12, 8),
              [(f"sum(rate(postwarden_stats_window_events_total{rate}))", "events"),
               (f"sum(rate(postwarden_stats_windows_emitted_total{rate}))", "windows"),
               (f"sum(rate(postwarden_stats_rows_written_total{rate}))", "rows")], unit="ops"),
        _prom(6, "SMTP sessions", "Sessions in progress on the ingest nodes.", (12, 16, 12, 8),
              [("sum(postwarden_ingest_sessions)", "sessions")]),
    ]
    return _dashboard(
        "postwarden-pipeline-health", "Postwarden pipeline health",
        "Throughput, produce latency, consumer lag and errors from the Prometheus metrics of "
        "every Postwarden process (no per-user labels).",
        [_datasource_variable("prometheus", "Prometheus", "prometheus")], panels)


DASHBOARDS = {"postwarden-mail-flow.json": mail_flow, "postwarden-pipeline-health.json": pipeline_health}


def render(build) -> str:
    return json.dumps(build(), indent=2) + "\n"


def main() -> int:
    for name, build in DASHBOARDS.items():
        (DIR / name).write_text(render(build))
        print(DIR / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
