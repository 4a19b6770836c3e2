from tests.sinks.conftest import store  # noqa: F401  (both ClickHouse backends)
