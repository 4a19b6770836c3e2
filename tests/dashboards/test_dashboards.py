"""Every dashboard is valid Grafana 11.6 JSON and every ClickHouse panel query runs,
macros expanded, on both backends holding windows made by the pipeline code."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import jsonschema
import pytest

from dashboards import DIR, dashboard_files
from dashboards.build import DASHBOARDS, render
from dashboards.macros import expand
from tests.conftest import REPO
from tests.sinks.stats_data import fill

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


@pytest.fixture
def filled(store):
    fill(store, NOW, SENT)
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


def test_macro_expansion_refuses_what_it_cannot_expand():
    with pytest.raises(ValueError, match="not a tenant id"):
        expand("SELECT 1", 0, 1, ["x' OR 1=1 --"])
    with pytest.raises(ValueError, match="unexpanded macro"):
        expand("SELECT $__timeInterval(t)", 0, 1, ["example"])


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
