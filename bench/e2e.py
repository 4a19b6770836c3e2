"""End-to-end benchmark: SMTP load through the whole pipeline on this machine.

    python bench/e2e.py [--messages 3000] [--rate 250] [--duration 20] [--concurrency 20]
                        [--clickhouse chdb|server] [--partitions 4] [--soak SECONDS]

Starts a Tansu broker, a private clamd (EICAR signatures), ClickHouse (chdb in
the stats sink, or a server), a Faust worker, an ingest node and the stats
sink, each as its own process, then:

1. throughput: sends --messages corpus messages as fast as --concurrency SMTP
   sessions allow and prints sustained messages/s from the first SMTP accept
   to the last routed verdict (mail.deliver / mail.quarantine);
2. latency: offers --rate messages/s for --duration seconds (open loop) and
   prints p50/p95/p99 of the time from the ingest node's accept to the routed
   record's broker timestamp;
3. per process: CPU ms per message (from /proc) and peak memory (VmHWM).

--soak SECONDS runs phase 2 for that long instead and prints memory growth per
process every minute. Messages come from the SpamAssassin corpus (only those
listed in train.tsv; scripts/get-corpus.sh fetches it); without it, generated
messages of corpus-like size are used.
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from aiokafka import AIOKafkaConsumer, TopicPartition  # noqa: E402

from postwarden.local_services import ClickHouseServer, Tansu, free_port, stop_pid  # noqa: E402
from postwarden.records import RoutedMessage  # noqa: E402
from postwarden.topics import create_topics  # noqa: E402
from streams.clamd_service import ClamdServer  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def load_messages(limit: int) -> list[bytes]:
    from streams import training

    try:
        examples = training.load_examples(training.default_manifest(), training.default_corpus())
        raws = [e.raw.split(b"\n", 1)[1] if e.raw.startswith(b"From ") else e.raw for e in examples]
        source = "corpus (train.tsv)"
    except (FileNotFoundError, OSError):
        rng = random.Random(7)
        raws = [
            (f"From: s{i}@x.example\nTo: u@example.com\nSubject: message {i}\n"
             f"Message-ID: <{i}@x.example>\n\n").encode()
            + b" ".join(rng.choice([b"hello", b"meeting", b"report", b"offer", b"free", b"lunch"])
                        for _ in range(rng.randint(200, 900)))
            for i in range(2000)
        ]
        source = "generated (corpus not found: run scripts/get-corpus.sh)"
    # SMTP wants CRLF and the ingest node refuses bare CR or LF (smuggling defence).
    raws = [r.replace(b"\r\n", b"\n").replace(b"\r", b"").replace(b"\n", b"\r\n") for r in raws]
    print(f"messages: {len(raws)} from {source}, median {statistics.median(map(len, raws)) / 1024:.1f} KB",
          flush=True)
    return (raws * (limit // len(raws) + 1))[:limit]


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def rss_mb(self, key: str = "VmHWM") -> float:
        for line in Path(f"/proc/{self.popen.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
        return 0.0


@dataclass
class Pipeline:
    tmp: Path
    args: argparse.Namespace
    procs: list[Proc] = field(default_factory=list)
    services: list = field(default_factory=list)

    def start(self) -> None:
        self.broker = Tansu(log_path=self.tmp / "tansu.log").start()
        self.services.append(self.broker)
        create_topics([self.broker.bootstrap], self.args.partitions)
        clamd = ClamdServer(self.tmp / "clamd").start()
        self.services.append(clamd)
        env = {k: v for k, v in os.environ.items() if not k.startswith("POSTWARDEN_")}
        env.update({
            "POSTWARDEN_BOOTSTRAP_SERVERS": self.broker.bootstrap,
            "POSTWARDEN_TOPIC_PARTITIONS": str(self.args.partitions),
            "POSTWARDEN_DATA_DIR": str(self.tmp / "data"),
            "POSTWARDEN_CLAMD_ADDRESS": clamd.address,
            "POSTWARDEN_LOG_LEVEL": "WARNING",
        })
        if self.args.clickhouse == "server":
            ch = ClickHouseServer(self.tmp / "clickhouse").start()
            self.services.append(ch)
            env["POSTWARDEN_CLICKHOUSE_URL"] = ch.url
        self.smtp_port = free_port()
        health = {name: free_port() for name in ("worker", "ingest", "stats")}
        for name, cmd, extra in (
            ("stats", ["sink", "stats"], {}),
            ("worker", ["worker"], {}),
            ("ingest", ["ingest"], {"POSTWARDEN_SMTP_PORT": str(self.smtp_port)}),
        ):
            log = open(self.tmp / f"{name}.log", "wb")
            p = subprocess.Popen([sys.executable, "-m", "postwarden.cli", *cmd],
                                 env={**env, **extra, "POSTWARDEN_HEALTH_PORT": str(health[name])},
                                 cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            self.procs.append(Proc(name, p))
        import urllib.request

        for name, port in health.items():
            deadline = time.monotonic() + 90
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        log = (self.tmp / f"{name}.log").read_text(errors="replace")[-3000:]
                        self.stop()
                        raise SystemExit(f"{name} not ready:\n{log}")
                    time.sleep(0.3)

    def stop(self) -> None:
        for p in reversed(self.procs):
            stop_pid(p.popen, 15)
        for s in reversed(self.services):
            s.stop()


class SmtpSession:
    """A minimal SMTP client: one connection, many transactions, no per-message handshake."""

    def __init__(self, port: int) -> None:
        self.port = port

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        await self._reply()
        self.writer.write(b"EHLO bench.test\r\n")
        await self._reply()

    async def _reply(self) -> bytes:
        while True:
            line = await self.reader.readline()
            if not line:
                raise ConnectionError("server closed the connection")
            if line[3:4] != b"-":
                return line

    async def send(self, raw: bytes) -> bool:
        body = raw.replace(b"\r\n.", b"\r\n..")
        self.writer.write(b"MAIL FROM:<bench@x.example>\r\nRCPT TO:<user@example.com>\r\nDATA\r\n")
        for _ in range(3):
            await self._reply()
        self.writer.write(body + (b"" if body.endswith(b"\r\n") else b"\r\n") + b".\r\n")
        return (await self._reply()).startswith(b"250")

    async def close(self) -> None:
        self.writer.write(b"QUIT\r\n")
        self.writer.close()


async def routed_reader(bootstrap: str) -> AIOKafkaConsumer:
    """A group-less consumer positioned at the current end of both output topics, so
    it sees exactly what is routed from now on (a group join could miss the start)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    parts = [TopicPartition(t, p) for t in ("mail.deliver", "mail.quarantine")
             for p in (consumer.partitions_for_topic(t) or set())]
    if not parts:
        await consumer.stop()
        raise SystemExit("the output topics have no partitions")
    consumer.assign(parts)
    await consumer.seek_to_end(*parts)
    for tp in parts:
        await consumer.position(tp)
    return consumer


async def collect_routed(consumer: AIOKafkaConsumer, expected: dict[str, int], timeout: float,
                         latencies: list[float], times: list[float]) -> None:
    """Reads routed records until expected["n"] arrived; senders lower it for refused mail."""
    try:
        deadline = time.monotonic() + timeout
        while len(latencies) < expected["n"] and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            for records in batch.values():
                for r in records:
                    routed = RoutedMessage.decode(r.value)
                    latencies.append(r.timestamp / 1000 - routed.received_at)
                    times.append(r.timestamp / 1000)
    finally:
        await consumer.stop()


async def throughput(port: int, bootstrap: str, msgs: list[bytes], concurrency: int) -> dict:
    latencies: list[float] = []
    times: list[float] = []
    expected = {"n": len(msgs)}
    collector = asyncio.create_task(collect_routed(await routed_reader(bootstrap), expected, 600,
                                                   latencies, times))
    queue = list(reversed(msgs))
    accepted = 0
    start = time.time()

    async def worker() -> None:
        nonlocal accepted
        s = SmtpSession(port)
        await s.open()
        while queue:
            ok = await s.send(queue.pop())
            accepted += ok
        await s.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    accept_done = time.time()
    expected["n"] = accepted
    await collector
    end = max(times) if times else time.time()
    return {"accepted": accepted, "routed": len(latencies), "accept_rate": accepted / (accept_done - start),
            "e2e_rate": len(latencies) / (end - start), "latencies": latencies}


async def offered_load(port: int, bootstrap: str, msgs: list[bytes], rate: float, duration: float,
                       sessions: int, on_minute=None) -> dict:
    total = int(rate * duration)
    latencies: list[float] = []
    times: list[float] = []
    expected = {"n": total}
    collector = asyncio.create_task(collect_routed(await routed_reader(bootstrap), expected,
                                                   duration + 120, latencies, times))
    pool = [SmtpSession(port) for _ in range(sessions)]
    await asyncio.gather(*(s.open() for s in pool))
    free: asyncio.Queue[SmtpSession] = asyncio.Queue()
    for s in pool:
        free.put_nowait(s)
    start = time.monotonic()
    late = 0
    next_minute = start + 60

    async def one(raw: bytes) -> None:
        s = await free.get()
        try:
            if not await s.send(raw):
                expected["n"] -= 1
        finally:
            free.put_nowait(s)

    tasks = []
    for i in range(total):
        due = start + i / rate
        now = time.monotonic()
        if due > now:
            await asyncio.sleep(due - now)
        elif now - due > 0.05:
            late += 1
        tasks.append(asyncio.create_task(one(msgs[i % len(msgs)])))
        if on_minute and time.monotonic() >= next_minute:
            on_minute(int((time.monotonic() - start) // 60))
            next_minute += 60
    await asyncio.gather(*tasks)
    await collector
    for s in pool:
        await s.close()
    return {"offered": total, "routed": len(latencies), "late_sends": late, "latencies": latencies}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main() -> None:
    # SIGTERM (e.g. from `timeout`) must still run the cleanup that stops the children.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    faulthandler.register(signal.SIGUSR1)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=20)
    ap.add_argument("--rate", type=float, default=250)
    ap.add_argument("--duration", type=float, default=20)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--clickhouse", choices=["chdb", "server"], default="chdb")
    ap.add_argument("--soak", type=float, default=0, help="seconds of offered load; prints memory growth")
    args = ap.parse_args()

    msgs = load_messages(max(args.messages, int(args.rate * max(args.duration, args.soak))))
    with tempfile.TemporaryDirectory(prefix="pw-bench-") as tmp:
        pipe = Pipeline(Path(tmp), args)
        pipe.start()
        try:
            if args.soak:
                base = {p.name: p.rss_mb("VmRSS") for p in pipe.procs}

                def report(minute: int) -> None:
                    growth = ", ".join(f"{p.name} {p.rss_mb('VmRSS') - base[p.name]:+.1f} MB"
                                       for p in pipe.procs)
                    print(f"soak minute {minute}: RSS growth {growth}", flush=True)

                res = asyncio.run(offered_load(pipe.smtp_port, pipe.broker.bootstrap, msgs, args.rate,
                                               args.soak, args.concurrency, report))
                print(f"soak: offered {res['offered']}, routed {res['routed']}, "
                      f"p99 {pct(res['latencies'], 0.99) * 1000:.0f} ms")
                return
            cpu0 = {p.name: p.cpu_seconds() for p in pipe.procs}
            res = asyncio.run(throughput(pipe.smtp_port, pipe.broker.bootstrap,
                                         msgs[:args.messages], args.concurrency))
            cpu1 = {p.name: p.cpu_seconds() for p in pipe.procs}
            n = max(1, res["routed"])
            print(f"throughput: {res['accepted']} accepted at {res['accept_rate']:.0f} msg/s (SMTP), "
                  f"{res['routed']} routed; sustained end to end {res['e2e_rate']:.0f} msg/s "
                  f"with {args.concurrency} sessions")
            print("CPU ms per message: " + ", ".join(
                f"{name} {(cpu1[name] - cpu0[name]) * 1000 / n:.2f}" for name in cpu0)
                + f", total {sum(cpu1[k] - cpu0[k] for k in cpu0) * 1000 / n:.2f}")
            lat = asyncio.run(offered_load(pipe.smtp_port, pipe.broker.bootstrap, msgs, args.rate,
                                           args.duration, args.concurrency))
            ls = lat["latencies"]
            print(f"latency at {args.rate:.0f} msg/s offered for {args.duration:.0f} s: "
                  f"routed {lat['routed']}/{lat['offered']}, p50 {pct(ls, .5) * 1000:.0f} ms, "
                  f"p95 {pct(ls, .95) * 1000:.0f} ms, p99 {pct(ls, .99) * 1000:.0f} ms "
                  f"(sends late by >50 ms: {lat['late_sends']})")
            print("peak memory: " + ", ".join(f"{p.name} {p.rss_mb():.0f} MB" for p in pipe.procs))
            for p in pipe.procs:
                if p.popen.poll() is not None:
                    log = (pipe.tmp / f"{p.name}.log").read_text(errors="replace")[-2000:]
                    print(f"{p.name} exited with {p.popen.returncode} during the run:\n{log}")
        finally:
            pipe.stop()


if __name__ == "__main__":
    main()
