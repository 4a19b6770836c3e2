import pytest

from sinks.stats_store import EmbeddedStatsStore, ServerStatsStore


@pytest.fixture(params=["clickhouse-server", "chdb"])
def store(request, tmp_path):
    """Each test runs against both backends; the server one gets a fresh database state."""
    if request.param == "chdb":
        s = EmbeddedStatsStore(tmp_path / "chdb")
    else:
        server = request.getfixturevalue("clickhouse_server")
        s = ServerStatsStore(server.url)
        s.query("DROP DATABASE IF EXISTS postwarden")
    s.migrate()
    yield s
    s.close()
