"""Delivery throughput: mail.deliver -> delivery sink -> a loopback SMTP server that accepts.

Starts its own Tansu broker and aiosmtpd server, produces N routed messages,
runs the delivery sink in this process and prints messages/s from the first
to the last 250. Usage: python bench/delivery.py [N] [SIZE_BYTES]
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from postwarden.local_services import Tansu  # noqa: E402
from postwarden.topics import create_topics  # noqa: E402
from sinks.delivery_sink import DeliverySink  # noqa: E402
from tests.delivery_helpers import message, produce, settings_for  # noqa: E402
from tests.smtp_servers import start_server, tenants_yaml  # noqa: E402


async def main(n: int, size: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="pw-bench-"))
    broker = Tansu(log_path=tmp / "tansu.log").start()
    server = start_server()
    try:
        create_topics([broker.bootstrap], partitions=4)
        tenants = tenants_yaml(tmp / "tenants.yaml", [{"host": "127.0.0.1", "port": server.port,
                                                       "tls": "none", "max_connections": 20}])
        settings = settings_for(broker.bootstrap, tmp, tenants, POSTWARDEN_LOG_LEVEL="WARNING")
        records = [message(f"u{i}@acme.test", subject=f"bench {i}") for i in range(n)]
        line = b"x" * 76 + b"\r\n"
        padding = line * max(0, (size - len(records[0].raw)) // len(line))
        produce(broker.bootstrap, [replace(r, raw=r.raw + padding) for r in records])
        sink = DeliverySink(settings)
        stop = asyncio.Event()
        started = time.perf_counter()
        task = asyncio.create_task(sink.run(stop))
        first = None
        while len(server.recorder.received) < n:
            if first is None and server.recorder.received:
                first = time.perf_counter()
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        last = time.perf_counter()
        stop.set()
        await task
        first = first or started
        print(f"delivered {n} messages of ~{size} B to a loopback SMTP server")
        print(f"  {n / (last - first):.0f} messages/s (first to last 250), "
              f"{n / (last - started):.0f} messages/s including group join "
              f"({last - started:.1f}s total)")
        print(f"  SMTP connections opened: {server.recorder.sessions}")
    finally:
        server.stop()
        broker.stop()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000,
                     int(sys.argv[2]) if len(sys.argv) > 2 else 3000))
