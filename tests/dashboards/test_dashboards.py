"""Every dashboard is valid Grafana 11.6 JSON and every ClickHouse panel query runs,
macros expanded, on both backends holding windows made by the pipeline code."""

from __future__ import annotations

import json
import random
import re
import time
from pathlib import Path

import jsonschema
import pytest

from dashboards import DIR, dashboard_files
from dashboards.build import DASHBOARDS, render
from postwarden.records import StatsEvent
from sinks.stats_store import WindowRows
from streams.stats_windows import PartitionWindows
from tests.conftest import REPO

SCHEMA = REPO.parent / "shared" / "schemas" / "grafana-dashboard-v11.6.schema.json"
CHART_DASHBOARDS = REPO / "deploy" / "helm" / "postwarden" / "dashboards"
NOW = int(time.time())
SENT = 6000


def panels() -> list[tuple[str, dict]]:
    return [(path.name, panel) for path in dashboard_files()
            for panel in json.loads(path.read_text())["panels"]]


def clickhouse_targets() -> list[tuple[str, str]]:
    out = []
    for name, panel in panels():
        for target in panel["targets"]:
            if target["datasource"]["type"] == "grafana-clickhouse-datasource":
                out.append((f"{name}:{panel['title']}", target["rawSql"]))
    variables = [v for path in dashboard_files()
                 for v in json.loads(path.read_text())["templating"]["list"] if v["type"] == "query"]
    out += [(f"variable {v['name']}", v["query"]) for v in variables
            if v["datasource"]["type"] == "grafana-clickhouse-datasource"]
    return out


def expand(sql: str, start: int, end: int, tenants: list[str]) -> str:
    """What the ClickHouse plugin sends for these macros."""
    sql = re.sub(r"\$__timeFilter\((\w+)\)",
                 lambda m: f"{m[1]} >= toDateTime({start}) AND {m[1]} <= toDateTime({end})", sql)
    sql = sql.replace("${tenant:singlequote}", ",".join(f"'{t}'" for t in tenants))
    assert "$" not in sql, f"unexpanded macro in {sql}"
    return sql


@pytest.fixture
def filled(store):
    """An hour of mail for two tenants, through the windows stage into the store."""
    rng = random.Random(11)
    pw = PartitionWindows(0, 60, grace=0, k=5)
    start = NOW - 3600
    for offset in range(SENT):
        t = start + offset * (3600 / SENT)
        verdict = rng.choice(["clean"] * 6 + ["spam"] * 3 + ["virus"])
        action = "deliver" if verdict == "clean" else rng.choice(["quarantine"] * 4 + ["release"])
        pw.add(offset, int(t * 1000), StatsEvent(
            tenant=rng.choice(["example", "acme"]), event_time=t, verdict=verdict,
            category=verdict if verdict == "spam" else "none", action=action,
            size_bytes=rng.randint(500, 200_000), spam_score=rng.uniform(0, 100),
            latency_ms=rng.uniform(5, 3000), virus_family="Eicar" if verdict == "virus" else None))
    rows = WindowRows()
    for w in pw.close_due(wall_now=NOW + 60):
        rows.add(w)
    store.write(rows)
    return store


def test_dashboards_match_their_generator():
    assert {p.name for p in dashboard_files()} == set(DASHBOARDS)
    for name, build in DASHBOARDS.items():
        assert (DIR / name).read_text() == render(build), f"run python -m dashboards.build ({name})"


@pytest.mark.parametrize("path", dashboard_files(), ids=lambda p: p.name)
def test_dashboard_validates_against_the_grafana_schema(path: Path):
    dashboard = json.loads(path.read_text())
    jsonschema.Draft7Validator(json.loads(SCHEMA.read_text())).validate(dashboard)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and dashboard["uid"] and dashboard["title"]


def test_the_chart_ships_the_same_dashboards():
    for path in dashboard_files():
        assert (CHART_DASHBOARDS / path.name).read_text() == path.read_text(), path.name


def test_dashboards_cover_what_operators_need():
    titles = " | ".join(p["title"].lower() for _, p in panels())
    for wanted in ("mail flow", "verdict mix", "spam", "virus", "quarantine and releases",
                   "latency percentiles", "per tenant", "consumer lag", "produce latency", "errors"):
        assert wanted in titles, wanted
    mail_flow = json.loads((DIR / "postwarden-mail-flow.json").read_text())
    assert any(v["name"] == "tenant" for v in mail_flow["templating"]["list"])
    for _, sql in clickhouse_targets():
        assert "$__timeInterval" not in sql and "toStartOfInterval" not in sql


def test_prometheus_queries_name_metrics_the_code_exports():
    source = "\n".join(p.read_text() for d in ("ingest", "streams", "sinks")
                       for p in (REPO / d).glob("*.py"))
    exported = set(re.findall(r'"(postwarden_[a-z_]+)"', source))
    for _, panel in panels():
        for target in panel["targets"]:
            for metric in re.findall(r"postwarden_[a-z_]+", target.get("expr", "")):
                assert re.sub(r"_(bucket|sum|count)$", "", metric) in exported, metric


def test_every_clickhouse_query_runs_on_this_backend(filled):
    queries = clickhouse_targets()
    assert len(queries) >= 10
    for name, sql in queries:
        rows = filled.query(expand(sql, NOW - 6 * 3600, NOW + 60, ["example", "acme"]))
        assert rows, name
    total = filled.query(expand(dict(queries)["postwarden-mail-flow.json:Messages"],
                                NOW - 6 * 3600, NOW + 60, ["example", "acme"]))
    assert int(total[0][0]) == SENT
    one = filled.query(expand(dict(queries)["postwarden-mail-flow.json:Messages"],
                              NOW - 6 * 3600, NOW + 60, ["example"]))
    assert 0 < int(one[0][0]) < SENT
    latency = filled.query(expand(dict(queries)["postwarden-mail-flow.json:End-to-end latency percentiles"],
                                  NOW - 6 * 3600, NOW + 60, ["example", "acme"]))
    for _, p50, p95, p99 in latency:
        assert 0 < float(p50) <= float(p95) <= float(p99)
