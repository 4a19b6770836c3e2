"""Where aggregate statistics live: one interface, two ClickHouse backends.

- ServerStatsStore: a ClickHouse server through clickhouse-driver (distributed setup).
- EmbeddedStatsStore: chdb, ClickHouse in-process at a local directory (one machine).

Only closed, k-anonymous windows are stored (streams/stats_windows.py). Rows
are idempotent: each table is a ReplacingMergeTree keyed by window, source and
dimensions, with the window's message count as version, so a replayed window
replaces its rows instead of adding to them. Readers use FINAL (or the views).

The schema is versioned (schema_migrations) and portable down to ClickHouse
18.16: no LowCardinality, DateTime64 or CODEC, and TTL only where the server
is new enough (19.6).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

from postwarden.config import Settings
from postwarden.records import StatsWindow

DATABASE = "postwarden"
RETENTION_DAYS = 400

COUNTS = "stats_counts"
HISTOGRAMS = "stats_histograms"
VIRUS_FAMILIES = "stats_virus_families"

_WINDOW = ("window_start", "window_seconds", "tenant")
_SOURCE = ("source_partition", "source_epoch")
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    COUNTS: (*_WINDOW, "verdict", "category", "action", *_SOURCE,
             "messages", "bytes", "spam_score_sum", "latency_ms_sum", "version"),
    HISTOGRAMS: (*_WINDOW, "metric", "le", *_SOURCE, "messages", "version"),
    VIRUS_FAMILIES: (*_WINDOW, "family", *_SOURCE, "messages", "version"),
}


class StoreError(RuntimeError):
    """The ClickHouse backend could not be reached or refused a statement."""


@dataclass
class WindowRows:
    """Rows for each table, as tuples in TABLE_COLUMNS order."""

    tables: dict[str, list[tuple[Any, ...]]] = field(
        default_factory=lambda: {name: [] for name in TABLE_COLUMNS})

    def add(self, w: StatsWindow) -> None:
        head = (datetime.fromtimestamp(w.window_start, timezone.utc), w.window_seconds, w.tenant)
        src = (w.source_partition, w.source_epoch)
        for verdict, category, action, messages, size, score, latency in w.cells:
            self.tables[COUNTS].append((*head, verdict, category, action, *src, int(messages),
                                        int(size), float(score), float(latency), w.messages))
        for metric, le, messages in w.histograms:
            self.tables[HISTOGRAMS].append((*head, metric, float(le), *src, int(messages), w.messages))
        for family, messages in w.virus_families:
            self.tables[VIRUS_FAMILIES].append((*head, family, *src, int(messages), w.messages))

    def __len__(self) -> int:
        return sum(len(rows) for rows in self.tables.values())


# --- schema ---------------------------------------------------------------


def _ttl(version: tuple[int, ...]) -> str:
    return f" TTL window_start + INTERVAL {RETENTION_DAYS} DAY" if version >= (19, 6) else ""


def _v1_database(version: tuple[int, ...]) -> list[str]:
    return [f"CREATE DATABASE IF NOT EXISTS {DATABASE}"]


def _v2_windows(version: tuple[int, ...]) -> list[str]:
    head = "window_start DateTime, window_seconds UInt32, tenant String,"
    src = "source_partition UInt16, source_epoch UInt64,"
    engine = "ENGINE = ReplacingMergeTree(version) PARTITION BY toYYYYMM(window_start)"
    return [
        f"""CREATE TABLE IF NOT EXISTS {DATABASE}.{COUNTS} ({head}
            verdict String, category String, action String, {src}
            messages UInt64, bytes UInt64, spam_score_sum Float64, latency_ms_sum Float64,
            version UInt64) {engine}
        ORDER BY (tenant, window_start, verdict, category, action, source_partition, source_epoch)
        {_ttl(version)}""",
        f"""CREATE TABLE IF NOT EXISTS {DATABASE}.{HISTOGRAMS} ({head}
            metric String, le Float64, {src} messages UInt64, version UInt64) {engine}
        ORDER BY (tenant, window_start, metric, le, source_partition, source_epoch)
        {_ttl(version)}""",
        f"""CREATE TABLE IF NOT EXISTS {DATABASE}.{VIRUS_FAMILIES} ({head}
            family String, {src} messages UInt64, version UInt64) {engine}
        ORDER BY (tenant, window_start, family, source_partition, source_epoch)
        {_ttl(version)}""",
    ]


def _v3_drop_per_event_minutes(version: tuple[int, ...]) -> list[str]:
    # The first schema counted per-minute cells without k-anonymity; it is
    # dropped rather than kept, and mail_stats now reads the anonymous windows.
    return [
        f"DROP TABLE IF EXISTS {DATABASE}.mail_stats",
        f"DROP TABLE IF EXISTS {DATABASE}.mail_stats_minute",
        f"""CREATE VIEW {DATABASE}.mail_stats AS
        SELECT window_start AS minute, tenant, verdict, category, action,
               sum(messages) AS messages, sum(bytes) AS bytes,
               sum(latency_ms_sum) AS latency_ms_sum, sum(spam_score_sum) AS spam_score_sum
        FROM {DATABASE}.{COUNTS} FINAL
        GROUP BY window_start, tenant, verdict, category, action
        HAVING messages > 0""",
    ]


MIGRATIONS: tuple[tuple[int, str, Callable[[tuple[int, ...]], list[str]]], ...] = (
    (1, "database", _v1_database),
    (2, "k-anonymous window tables", _v2_windows),
    (3, "drop per-event minute cells; mail_stats over windows", _v3_drop_per_event_minutes),
)

_MIGRATIONS_TABLE = f"""CREATE TABLE IF NOT EXISTS {DATABASE}.schema_migrations (
    version UInt32, name String, applied_at DateTime
) ENGINE = MergeTree ORDER BY version"""


def _parse_version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:3])


class StatsStore(Protocol):
    backend: str

    def migrate(self) -> list[str]: ...
    def insert(self, table: str, rows: list[tuple[Any, ...]]) -> None: ...
    def query(self, sql: str) -> list[tuple[Any, ...]]: ...
    def query_columns(self, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]: ...
    def server_version(self) -> tuple[int, ...]: ...
    def close(self) -> None: ...


class _Store:
    """What both backends share: migrations and batched window writes."""

    backend = ""

    def execute(self, sql: str) -> None:
        raise NotImplementedError

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def insert(self, table: str, rows: list[tuple[Any, ...]]) -> None:
        raise NotImplementedError

    def server_version(self) -> tuple[int, ...]:
        return _parse_version(str(self.query("SELECT version()")[0][0]))

    def migrate(self) -> list[str]:
        """Applies the migrations not yet recorded; returns the statements run."""
        version = self.server_version()
        self.execute(f"CREATE DATABASE IF NOT EXISTS {DATABASE}")
        self.execute(_MIGRATIONS_TABLE)
        done = {int(r[0]) for r in self.query(f"SELECT version FROM {DATABASE}.schema_migrations")}
        ran: list[str] = []
        for number, name, statements in MIGRATIONS:
            if number in done:
                continue
            for sql in statements(version):
                self.execute(sql)
                ran.append(sql)
            self.insert("schema_migrations", [(number, name, datetime.now(timezone.utc))])
        return ran

    def applied_migrations(self) -> list[int]:
        return sorted(int(r[0]) for r in self.query(f"SELECT version FROM {DATABASE}.schema_migrations"))

    def write(self, rows: WindowRows) -> None:
        for table, batch in rows.tables.items():
            if batch:
                self.insert(table, batch)


class ServerStatsStore(_Store):
    backend = "clickhouse-server"

    def __init__(self, url: str, connect_timeout: float = 5.0, password: str = "") -> None:
        from clickhouse_driver import Client

        parsed = urlparse(url)
        self._client = Client(
            host=parsed.hostname or "127.0.0.1",
            port=parsed.port or 9000,
            user=unquote(parsed.username or "default"),
            password=unquote(parsed.password or "") or password,
            database=(parsed.path.lstrip("/") or "default"),
            secure=parsed.scheme == "clickhouses",
            connect_timeout=connect_timeout,
            send_receive_timeout=30,
            settings={"insert_block_size": 100_000},
        )

    def _execute(self, sql: str, params: Any = None) -> Any:
        from clickhouse_driver.errors import Error as DriverError

        try:
            return self._client.execute(sql, params)
        except (DriverError, OSError, EOFError) as exc:
            self._client.disconnect()
            raise StoreError(f"ClickHouse server: {type(exc).__name__}: {exc}") from exc

    def execute(self, sql: str) -> None:
        self._execute(sql)

    def insert(self, table: str, rows: list[tuple[Any, ...]]) -> None:
        if rows:
            columns = _columns(table)
            self._execute(f"INSERT INTO {DATABASE}.{table} ({', '.join(columns)}) VALUES", rows)

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in self._execute(sql)]

    def query_columns(self, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        from clickhouse_driver.errors import Error as DriverError

        try:
            rows, types = self._client.execute(sql, with_column_types=True)
        except (DriverError, OSError, EOFError) as exc:
            self._client.disconnect()
            raise StoreError(f"ClickHouse server: {type(exc).__name__}: {exc}") from exc
        return [name for name, _ in types], [tuple(r) for r in rows]

    def close(self) -> None:
        self._client.disconnect()


class EmbeddedStatsStore(_Store):
    """chdb holds a lock on its directory: one process per directory."""

    backend = "chdb"

    def __init__(self, path: Path) -> None:
        from chdb import session

        path.mkdir(parents=True, exist_ok=True)
        try:
            self._session = session.Session(str(path))
        except Exception as exc:
            raise StoreError(f"cannot open embedded ClickHouse at {path}: {exc}") from exc

    def _run(self, sql: str, fmt: str = "CSV") -> Any:
        try:
            return self._session.query(sql, fmt)
        except Exception as exc:
            raise StoreError(f"embedded ClickHouse: {exc}") from exc

    def execute(self, sql: str) -> None:
        self._run(sql)

    def insert(self, table: str, rows: list[tuple[Any, ...]]) -> None:
        if rows:
            values = ",".join("(" + ",".join(_literal(v) for v in r) + ")" for r in rows)
            self._run(f"INSERT INTO {DATABASE}.{table} ({', '.join(_columns(table))}) VALUES {values}")

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        return self.query_columns(sql)[1]

    def query_columns(self, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        result = self._run(sql, "JSONCompact")
        text = result.bytes().decode() if hasattr(result, "bytes") else str(result)
        if not text.strip():
            return [], []
        data = json.loads(text)
        return [m["name"] for m in data["meta"]], [tuple(row) for row in data["data"]]

    def close(self) -> None:
        self._session.close()


def _columns(table: str) -> tuple[str, ...]:
    if table == "schema_migrations":
        return ("version", "name", "applied_at")
    return TABLE_COLUMNS[table]


def _literal(value: Any) -> str:
    if isinstance(value, datetime):
        # Epoch seconds: a date string would be read in the engine's time zone.
        return f"toDateTime({int(value.timestamp())})"
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, float):
        return repr(value)
    return str(int(value))


def open_store(settings: Settings) -> StatsStore:
    """The configured backend: a server URL, or chdb under data_dir/clickhouse."""
    if settings.clickhouse_url:
        return ServerStatsStore(settings.clickhouse_url, password=settings.clickhouse_password)
    return EmbeddedStatsStore(settings.data_dir / "clickhouse")
