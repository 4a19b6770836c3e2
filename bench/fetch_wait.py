"""Does the broker answer a waiting fetch as soon as data arrives (long-poll wake-up)?

Starts a Tansu broker, then for several fetch_max_wait_ms values produces one
record at a time (acks=all) to a consumer already waiting in a fetch and prints
the produce -> consume time. A broker that wakes waiting fetches answers in a
few ms whatever the wait; one that does not (Tansu 0.6) answers when the wait
expires. Usage: python bench/fetch_wait.py
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # noqa: E402
from kafka import KafkaAdminClient  # noqa: E402
from kafka.admin import NewTopic  # noqa: E402

from postwarden.local_services import Tansu  # noqa: E402

TOPIC = "bench.fetch-wait"


async def trial(bootstrap: str, wait_ms: int, rounds: int = 20) -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                fetch_max_wait_ms=wait_ms)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await consumer.start()
    await producer.start()
    try:
        tp = TopicPartition(TOPIC, 0)
        consumer.assign([tp])
        await consumer.seek_to_end(tp)
        await consumer.position(tp)
        times = []
        for _ in range(rounds):
            await asyncio.sleep(0.137)  # lands somewhere inside the consumer's waiting fetch
            started = time.perf_counter()
            await producer.send_and_wait(TOPIC, b"x")
            await consumer.getmany(tp, timeout_ms=5000)
            times.append((time.perf_counter() - started) * 1000)
        times.sort()
        print(f"fetch_max_wait_ms={wait_ms}: produce -> consume p50 {times[len(times) // 2]:.0f} ms, "
              f"max {times[-1]:.0f} ms")
    finally:
        await consumer.stop()
        await producer.stop()


async def main() -> None:
    broker = Tansu().start()
    try:
        admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
        admin.create_topics([NewTopic(TOPIC, 1, 1)])
        admin.close()
        for wait_ms in (1500, 500, 100, 10):
            await trial(broker.bootstrap, wait_ms)
    finally:
        broker.stop()


if __name__ == "__main__":
    asyncio.run(main())
