"""Where aggregate statistics live: one interface, two ClickHouse backends.

- ServerStatsStore: a ClickHouse server through clickhouse-driver (distributed setup).
- EmbeddedStatsStore: chdb, ClickHouse in-process at a local directory (one machine).

The schema is portable down to ClickHouse 18.16: no TTL, LowCardinality,
DateTime64 or CODEC unless the server is new enough (gated on version()).
Rows are idempotent: ReplacingMergeTree keeps, per key, the row with the
highest version, so a replayed batch replaces instead of adding.
"""

from __future__ import annotations

import re
from dataclasses import astuple, dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

from postwarden.config import Settings

DATABASE = "postwarden"
TABLE = "mail_stats_minute"


@dataclass(frozen=True, slots=True)
class StatsRow:
    """Counts for one cell (minute x tenant x verdict x category x action) within one
    chunk of source offsets; the chunk makes replays replace rather than add.
    source_epoch (the broker timestamp of the chunk's first record) tells apart
    chunks with the same offsets in two lives of a topic (a recreated broker)."""

    minute: datetime
    tenant: str
    verdict: str
    category: str
    action: str
    source_partition: int
    source_chunk: int
    source_epoch: int
    messages: int
    bytes: int
    latency_ms_sum: float
    latency_ms_max: float
    spam_score_sum: float
    version: int


COLUMNS = tuple(f.name for f in fields(StatsRow))


class StoreError(RuntimeError):
    """The ClickHouse backend could not be reached or refused a statement."""


def _migrations(version: tuple[int, ...]) -> list[str]:
    ttl = " TTL minute + INTERVAL 400 DAY" if version >= (19, 6) else ""
    return [
        f"CREATE DATABASE IF NOT EXISTS {DATABASE}",
        f"""CREATE TABLE IF NOT EXISTS {DATABASE}.{TABLE} (
            minute DateTime,
            tenant String,
            verdict String,
            category String,
            action String,
            source_partition UInt16,
            source_chunk UInt64,
            source_epoch UInt64,
            messages UInt64,
            bytes UInt64,
            latency_ms_sum Float64,
            latency_ms_max Float64,
            spam_score_sum Float64,
            version UInt64
        ) ENGINE = ReplacingMergeTree(version)
        PARTITION BY toYYYYMM(minute)
        ORDER BY (tenant, minute, verdict, category, action, source_partition, source_chunk, source_epoch)
        {ttl}""",
        # Readers use this view: FINAL collapses replayed rows before summing.
        f"""CREATE VIEW IF NOT EXISTS {DATABASE}.mail_stats AS
        SELECT minute, tenant, verdict, category, action,
               sum(messages) AS messages, sum(bytes) AS bytes,
               sum(latency_ms_sum) AS latency_ms_sum, max(latency_ms_max) AS latency_ms_max,
               sum(spam_score_sum) AS spam_score_sum
        FROM {DATABASE}.{TABLE} FINAL
        GROUP BY minute, tenant, verdict, category, action""",
    ]


def _parse_version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:3])


class StatsStore(Protocol):
    backend: str

    def migrate(self) -> list[str]: ...
    def insert(self, rows: list[StatsRow]) -> None: ...
    def query(self, sql: str) -> list[tuple[Any, ...]]: ...
    def server_version(self) -> tuple[int, ...]: ...
    def close(self) -> None: ...


class ServerStatsStore:
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

    def _execute(self, sql: str, params: Any = None, **kw: Any) -> Any:
        from clickhouse_driver.errors import Error as DriverError

        try:
            return self._client.execute(sql, params, **kw)
        except (DriverError, OSError, EOFError) as exc:
            self._client.disconnect()
            raise StoreError(f"ClickHouse server: {type(exc).__name__}: {exc}") from exc

    def server_version(self) -> tuple[int, ...]:
        return _parse_version(self._execute("SELECT version()")[0][0])

    def migrate(self) -> list[str]:
        statements = _migrations(self.server_version())
        for sql in statements:
            self._execute(sql)
        return statements

    def insert(self, rows: list[StatsRow]) -> None:
        if rows:
            self._execute(f"INSERT INTO {DATABASE}.{TABLE} ({', '.join(COLUMNS)}) VALUES",
                          [astuple(r) for r in rows])

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in self._execute(sql)]

    def close(self) -> None:
        self._client.disconnect()


class EmbeddedStatsStore:
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

    def server_version(self) -> tuple[int, ...]:
        return _parse_version(str(self._run("SELECT version()")))

    def migrate(self) -> list[str]:
        statements = _migrations(self.server_version())
        for sql in statements:
            self._run(sql)
        return statements

    def insert(self, rows: list[StatsRow]) -> None:
        if rows:
            values = ",".join("(" + ",".join(_literal(v) for v in astuple(r)) + ")" for r in rows)
            self._run(f"INSERT INTO {DATABASE}.{TABLE} ({', '.join(COLUMNS)}) VALUES {values}")

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        import json

        result = self._run(sql, "JSONCompact")
        text = result.bytes().decode() if hasattr(result, "bytes") else str(result)
        if not text.strip():
            return []
        return [tuple(row) for row in json.loads(text)["data"]]

    def close(self) -> None:
        self._session.close()


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
