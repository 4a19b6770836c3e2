"""Structured JSON logs.

Only fields whitelisted here leave a process: message ids, tenant ids and
operational facts. Addresses, subjects, IPs and content have no field, so a
call site cannot log them by accident through ``extra``.
"""

from __future__ import annotations

import json
import logging
import sys
import time

ALLOWED_FIELDS = (
    "message_id", "tenant", "component", "reason", "code", "partition", "offset",
    "count", "rows", "elapsed_ms", "attempt", "child", "pid", "returncode", "topic", "status",
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in ALLOWED_FIELDS:
            if key in record.__dict__:
                out[key] = record.__dict__[key]
        if record.exc_info and record.exc_info[0] is not None:
            # Type and message only: tracebacks can carry local values of a message.
            out["error"] = f"{record.exc_info[0].__name__}: {record.exc_info[1]}"
        return json.dumps(out, default=str)


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiosmtpd logs peers and commands (addresses) at INFO; keep only its warnings.
    # clickhouse_driver names its server's address in connection warnings.
    for noisy in ("mail.log", "aiokafka", "kafka", "clickhouse_driver"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    logging.Formatter.converter = time.gmtime
