"""`postwarden dashboards push` against a local HTTP server that plays Grafana and checks requests."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from dashboards import dashboard_files
from dashboards.push import load_datasources, PushError
from postwarden.cli import main
from postwarden.local_services import free_port

TOKEN = "glsa_test_token"
ENV = {
    "POSTWARDEN_GRAFANA_CLICKHOUSE_HOST": "clickhouse.analytics",
    "POSTWARDEN_GRAFANA_CLICKHOUSE_PORT": "9000",
    "POSTWARDEN_GRAFANA_CLICKHOUSE_USER": "grafana",
    "POSTWARDEN_GRAFANA_CLICKHOUSE_PASSWORD": "s3cret",
    "POSTWARDEN_GRAFANA_PROMETHEUS_URL": "http://prometheus:9090",
}


class FakeGrafana:
    """Keeps datasources, folders and dashboards by uid, like Grafana's HTTP API."""

    def __init__(self) -> None:
        self.datasources: dict[str, dict] = {}
        self.folders: dict[str, dict] = {}
        self.dashboards: dict[str, dict] = {}
        self.requests: list[tuple[str, str]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> dict:
                return json.loads(self.rfile.read(int(self.headers["Content-Length"])))

            def _handle(self, method: str) -> None:
                fake.requests.append((method, self.path))
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    return self._reply(401, {"message": "Unauthorized"})
                path = self.path
                if method == "GET" and path.startswith("/api/datasources/uid/"):
                    uid = path.rsplit("/", 1)[1]
                    if uid in fake.datasources:
                        return self._reply(200, fake.datasources[uid])
                    return self._reply(404, {"message": "Data source not found"})
                if method == "POST" and path == "/api/datasources":
                    ds = self._body()
                    assert ds["uid"] not in fake.datasources
                    fake.datasources[ds["uid"]] = ds
                    return self._reply(200, {"message": "Datasource added", "id": len(fake.datasources)})
                if method == "PUT" and path.startswith("/api/datasources/uid/"):
                    ds = self._body()
                    assert ds["uid"] == path.rsplit("/", 1)[1] in fake.datasources
                    fake.datasources[ds["uid"]] = ds
                    return self._reply(200, {"message": "Datasource updated"})
                if method == "GET" and path.startswith("/api/folders/"):
                    uid = path.rsplit("/", 1)[1]
                    if uid in fake.folders:
                        return self._reply(200, fake.folders[uid])
                    return self._reply(404, {"message": "folder not found"})
                if method == "POST" and path == "/api/folders":
                    folder = self._body()
                    fake.folders[folder["uid"]] = folder
                    return self._reply(200, folder)
                if method == "POST" and path == "/api/dashboards/db":
                    body = self._body()
                    assert body["overwrite"] is True and body["folderUid"] in fake.folders
                    fake.dashboards[body["dashboard"]["uid"]] = body["dashboard"]
                    return self._reply(200, {"status": "success", "uid": body["dashboard"]["uid"]})
                return self._reply(404, {"message": f"no route {method} {path}"})

            def do_GET(self):
                self._handle("GET")

            def do_POST(self):
                self._handle("POST")

            def do_PUT(self):
                self._handle("PUT")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeGrafana:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def grafana_env(monkeypatch):
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)


def test_push_creates_then_updates_everything(grafana_env, capsys):
    with FakeGrafana() as grafana:
        assert main(["dashboards", "push", "--url", grafana.url, "--token", TOKEN]) == 0
        assert set(grafana.datasources) == {"postwarden-clickhouse", "postwarden-prometheus"}
        ch = grafana.datasources["postwarden-clickhouse"]
        assert ch["type"] == "grafana-clickhouse-datasource"
        assert ch["jsonData"]["host"] == "clickhouse.analytics" and ch["jsonData"]["port"] == 9000
        assert ch["secureJsonData"]["password"] == "s3cret"
        assert grafana.datasources["postwarden-prometheus"]["url"] == "http://prometheus:9090"
        assert grafana.folders["postwarden"]["title"] == "Postwarden"
        assert set(grafana.dashboards) == {json.loads(p.read_text())["uid"] for p in dashboard_files()}
        out = capsys.readouterr().out
        assert "datasource postwarden-clickhouse: created" in out and "folder postwarden: created" in out

        grafana.requests.clear()
        assert main(["dashboards", "push", "--url", grafana.url, "--token", TOKEN]) == 0
        assert ("PUT", "/api/datasources/uid/postwarden-clickhouse") in grafana.requests
        assert not any(m == "POST" and p in ("/api/datasources", "/api/folders") for m, p in grafana.requests)
        assert "datasource postwarden-prometheus: updated" in capsys.readouterr().out


def test_push_reports_a_refused_token(grafana_env, capsys):
    with FakeGrafana() as grafana:
        assert main(["dashboards", "push", "--url", grafana.url, "--token", "wrong"]) == 1
        assert "refused" in capsys.readouterr().err and not grafana.dashboards


def test_push_reports_an_unreachable_grafana(grafana_env, capsys):
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["dashboards", "push", "--url", url, "--token", TOKEN, "--skip-datasources"]) == 1
    assert f"cannot reach Grafana at {url}" in capsys.readouterr().err


def test_push_needs_a_token_a_url_and_the_datasource_variables(monkeypatch, capsys):
    monkeypatch.delenv("POSTWARDEN_GRAFANA_TOKEN", raising=False)
    assert main(["dashboards", "push", "--url", "http://127.0.0.1:1"]) == 2
    assert "token is needed" in capsys.readouterr().err
    assert main(["dashboards", "push", "--url", "grafana:3000", "--token", TOKEN]) == 2
    assert "must start with http" in capsys.readouterr().err
    with pytest.raises(PushError, match="POSTWARDEN_GRAFANA_CLICKHOUSE_PASSWORD"):
        load_datasources({k: v for k, v in ENV.items() if not k.endswith("PASSWORD")})
