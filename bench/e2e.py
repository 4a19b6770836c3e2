"""End-to-end benchmark: SMTP load through the whole pipeline on this machine.

    python bench/e2e.py [--messages 3000] [--rate 250] [--duration 20] [--concurrency 20]
                        [--clickhouse chdb|server] [--partitions 4] [--no-delivery]
                        [--producer-max-batch-size BYTES] [--recipients 1000] [--py-spy DIR]
                        [--workdir DIR] [--soak SECONDS] [--workers 1] [--env POSTWARDEN_X=V]

Starts a Tansu broker, a private clamd (EICAR signatures), ClickHouse (chdb in
the stats sink, or a server), --workers Faust workers, an ingest node, the stats sink
and (unless --no-delivery) the delivery sink with a loopback downstream SMTP
server that accepts and discards everything (bench/sink_smtpd.py, standing in for the
provider's), each as its own process, then:

1. throughput: sends --messages corpus messages as fast as --concurrency SMTP
   sessions allow and prints sustained messages/s from the first SMTP accept
   to the last routed verdict (mail.deliver / mail.quarantine), and to the
   last downstream 250 (delivery outcome on mail.delivered);
2. latency: offers --rate messages/s for --duration seconds (open loop) and
   prints p50/p95/p99 of the time from the ingest node's accept to the routed
   record's broker timestamp, and to the downstream server's 250;
3. per process: CPU ms per message (from /proc, the broker, clamd and the
   downstream server included; "bench" is this load generator) and peak
   memory (VmHWM).

Each figure is printed with the load average of the machine beside it.
--py-spy DIR (needs the "bench" extra) records a py-spy profile (collapsed stacks) of every Python
process during phase 1. --soak SECONDS runs phase 2 for that long instead and
prints memory growth per process every minute. Messages come from the
SpamAssassin corpus (only those listed in train.tsv; scripts/get-corpus.sh
fetches it); without it, generated messages of corpus-like size are used.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import faulthandler
import os
import random
import resource
import shutil
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

from postwarden.local_services import (  # noqa: E402
    ClickHouseServer, Tansu, free_port, stop_pid, wait_for_port,
)
from postwarden.held_mail import HeldMessage  # noqa: E402
from postwarden.records import RecordError, RoutedMessage  # noqa: E402
from postwarden.topics import DELIVER, DELIVERED, QUARANTINE, create_topics  # noqa: E402
from sinks.delivery_log import DeliveryOutcome, log_key  # noqa: E402
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
            + b"".join(rng.choice([b"hello", b"meeting", b"report", b"offer", b"free", b"lunch"])
                       + (b"\n" if n % 12 == 11 else b" ") for n in range(rng.randint(200, 900)))
            for i in range(2000)
        ]
        source = "generated (corpus not found: run scripts/get-corpus.sh)"
    raws = [r.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") for r in raws]
    # Lines over RFC 5322's 998 bytes: the ingest node refuses those over 4096, and a
    # sending MTA would have wrapped them.
    # Bare CRs are refused (554) by the ingest node.
    kept = [r for r in raws if max(map(len, r.split(b"\r\n"))) <= 998 and b"\r" not in r.replace(b"\r\n", b"")]
    print(f"messages: {len(kept)} from {source} ({len(raws) - len(kept)} left out: lines over 998 bytes or bare CRs), "
          f"median {statistics.median(map(len, kept)) / 1024:.1f} KB", flush=True)
    raws = kept
    return (raws * (limit // len(raws) + 1))[:limit]


def load() -> str:
    return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen

    @property
    def is_python(self) -> bool:
        return self.name.split("-")[0] in ("stats", "worker", "ingest", "delivery", "downstream")

    def cpu_seconds(self) -> float:
        try:
            fields = Path(f"/proc/{self.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def rss_mb(self, key: str = "VmHWM") -> float:
        try:
            lines = Path(f"/proc/{self.popen.pid}/status").read_text().splitlines()
        except OSError:
            return float("nan")
        for line in lines:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
        return 0.0


def bench_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


TENANTS = """tenants:
  - id: example
    domains: [example.com]
    relay_networks: [127.0.0.0/8]
    downstream:
      - host: 127.0.0.1
        port: {port}
        tls: none
        max_connections: 20
"""


@dataclass
class Pipeline:
    tmp: Path
    args: argparse.Namespace
    procs: list[Proc] = field(default_factory=list)
    services: list = field(default_factory=list)

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str]) -> Proc:
        log = open(self.tmp / f"{name}.log", "wb")
        p = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
        proc = Proc(name, p)
        self.procs.append(proc)
        return proc

    def start(self) -> None:
        self.broker = Tansu(log_path=self.tmp / "tansu.log").start()
        self.services.append(self.broker)
        self.procs.append(Proc("tansu", self.broker.proc))
        create_topics([self.broker.bootstrap], self.args.partitions)
        clamd = ClamdServer(self.tmp / "clamd").start()
        self.services.append(clamd)
        self.procs.append(Proc("clamd", clamd.proc))
        env = {k: v for k, v in os.environ.items() if not k.startswith("POSTWARDEN_")}
        env.update({
            "POSTWARDEN_BOOTSTRAP_SERVERS": self.broker.bootstrap,
            "POSTWARDEN_TOPIC_PARTITIONS": str(self.args.partitions),
            "POSTWARDEN_DATA_DIR": str(self.tmp / "data"),
            "POSTWARDEN_CLAMD_ADDRESS": clamd.unix_address,  # as `postwarden up` runs it
            "POSTWARDEN_LOG_LEVEL": "WARNING",
            # All load comes from one address.
            "POSTWARDEN_SMTP_MESSAGES_PER_IP_PER_MINUTE": "0",
        })
        env.update(self.args.env)
        if self.args.producer_max_batch_size:
            env["POSTWARDEN_PRODUCER_MAX_BATCH_SIZE"] = str(self.args.producer_max_batch_size)
        if self.args.clickhouse == "server":
            ch = ClickHouseServer(self.tmp / "clickhouse").start()
            self.services.append(ch)
            self.procs.append(Proc("clickhouse", ch.proc))
            env["POSTWARDEN_CLICKHOUSE_URL"] = ch.url
        downstream_port = free_port()
        tenants = self.tmp / "tenants.yaml"
        tenants.write_text(TENANTS.format(port=downstream_port))
        env["POSTWARDEN_TENANTS_FILE"] = str(tenants)
        self.smtp_port = free_port()
        children = [("stats", ["sink", "stats"], {}),
                    *((f"worker-{i}" if i > 1 else "worker", ["worker"], {})
                      for i in range(1, self.args.workers + 1)),
                    ("ingest", ["ingest"], {"POSTWARDEN_SMTP_PORT": str(self.smtp_port)})]
        if self.args.delivery:
            # The tenant's mailbox server: accepts and discards (bench/sink_smtpd.py).
            self._spawn("downstream", [sys.executable, str(REPO / "bench" / "sink_smtpd.py"),
                                       str(downstream_port)], env)
            wait_for_port("127.0.0.1", downstream_port, 20, self.procs[-1].popen)
            children.append(("delivery", ["sink", "delivery"], {}))
        health = {name: free_port() for name, _, _ in children}
        for name, cmd, extra in children:
            self._spawn(name, [sys.executable, "-m", "postwarden.cli", *cmd],
                        {**env, **extra, "POSTWARDEN_HEALTH_PORT": str(health[name])})
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

    def check(self) -> None:
        """Reports children that died, with the end of their logs."""
        for p in self.procs:
            if p.popen.poll() is not None:
                log = self.tmp / f"{p.name}.log"
                tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
                print(f"!! {p.name} exited with {p.popen.returncode}:\n{tail}", flush=True)
        if SmtpSession.refusals:
            print(f"SMTP refusals: {SmtpSession.refusals}", flush=True)
            SmtpSession.refusals.clear()

    def stop(self) -> None:
        services = {id(s.proc) for s in self.services}
        for p in reversed(self.procs):
            if id(p.popen) not in services:
                stop_pid(p.popen, 15)
        for s in reversed(self.services):
            s.stop()


class SmtpSession:
    """A minimal SMTP client: one connection, many transactions, no per-message handshake."""

    def __init__(self, port: int, recipients: int) -> None:
        self.port = port
        self.recipients = recipients
        self.sent = 0

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

    refusals: dict[bytes, int] = {}

    async def send(self, raw: bytes) -> bool:
        body = (b"." if raw.startswith(b".") else b"") + raw.replace(b"\r\n.", b"\r\n..")
        # Spread over many users, as real mail is: verdicts, quarantine and per-user state are
        # partitioned by recipient.
        rcpt = f"user{(id(self) + self.sent) % self.recipients}@example.com".encode()
        self.sent += 1
        self.writer.write(b"MAIL FROM:<bench@x.example>\r\nRCPT TO:<" + rcpt + b">\r\nDATA\r\n")
        replies = [await self._reply() for _ in range(3)]
        if not replies[2].startswith(b"354"):
            refused = next(r for r in replies if r[:1] in b"45")
            SmtpSession.refusals[refused[:60]] = SmtpSession.refusals.get(refused[:60], 0) + 1
            self.writer.write(b"RSET\r\n")
            await self._reply()
            return False
        self.writer.write(body + (b"" if body.endswith(b"\r\n") else b"\r\n") + b".\r\n")
        reply = await self._reply()
        if not reply.startswith(b"250"):
            SmtpSession.refusals[reply[:40]] = SmtpSession.refusals.get(reply[:40], 0) + 1
        return reply.startswith(b"250")

    async def close(self) -> None:
        self.writer.write(b"QUIT\r\n")
        self.writer.close()


class Collector:
    """Routed records and delivery outcomes of messages accepted after it started.

    Partitions are assigned (no consumer group to join) at their ends; a broker
    that reports the end too early (Tansu) only makes it skip a few older records.
    """

    def __init__(self, bootstrap: str, partitions: int, delivery: bool) -> None:
        self.bootstrap = bootstrap
        self.delivery = delivery
        topics = [DELIVER.name, QUARANTINE.name] + ([DELIVERED.name] if delivery else [])
        self.tps = [TopicPartition(t, p) for t in topics for p in range(partitions)]
        # log key -> (accepted at, routed at, action)
        self.routed: dict[str, tuple[float, float, str]] = {}
        self.to_deliver: set[str] = set()
        self.delivered: dict[str, float] = {}  # log key -> downstream 250 at
        self.bounced: dict[str, float] = {}
        self.expected: int | None = None

    async def start(self) -> None:
        self.since = time.time()
        self.consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                                         fetch_max_wait_ms=100)
        await self.consumer.start()
        self.consumer.assign(self.tps)
        await self.consumer.seek_to_end(*self.tps)
        for tp in self.tps:
            await self.consumer.position(tp)

    def done(self) -> bool:
        return self.expected is not None and len(self.routed) >= self.expected and (
            not self.delivery
            or len(self.to_deliver & (self.delivered.keys() | self.bounced.keys())) >= len(self.to_deliver))

    async def run(self, timeout: float) -> None:
        """Until `expected` (the SMTP 250s, set once sending ended) are routed and delivered."""
        try:
            deadline = time.monotonic() + timeout
            while not self.done() and time.monotonic() < deadline:
                batch = await self.consumer.getmany(timeout_ms=500, max_records=5000)
                for tp, records in batch.items():
                    for r in records:
                        self._add(tp.topic, r)
        finally:
            await self.consumer.stop()

    def _add(self, topic: str, r) -> None:
        if topic == DELIVERED.name:
            try:
                outcome = DeliveryOutcome.decode(r.value)
            except RecordError:
                return
            if outcome.at >= self.since:
                (self.delivered if outcome.outcome == "delivered" else self.bounced)[r.key.decode()] = outcome.at
            return
        # Held mail is sealed on mail.quarantine; its clear fields are enough here.
        routed = (HeldMessage if topic == QUARANTINE.name else RoutedMessage).decode(r.value)
        if routed.received_at < self.since:
            return
        key = log_key(routed.message_id, routed.recipient)
        action = "quarantine" if topic == QUARANTINE.name else "deliver"
        self.routed[key] = (routed.received_at, r.timestamp / 1000, action)
        if action == "deliver":
            self.to_deliver.add(key)

    def routed_latencies(self) -> list[float]:
        return [routed - accepted for accepted, routed, _ in self.routed.values()]

    def delivered_latencies(self) -> list[float]:
        return [at - self.routed[k][0] for k, at in self.delivered.items() if k in self.routed]

    def last_routed(self) -> float:
        return max((routed for _, routed, _ in self.routed.values()), default=time.time())

    def last_delivered(self) -> float:
        return max((at for k, at in self.delivered.items() if k in self.routed), default=time.time())


async def throughput(pipe: Pipeline, msgs: list[bytes], concurrency: int) -> dict:
    collector = Collector(pipe.broker.bootstrap, pipe.args.partitions, pipe.args.delivery)
    await collector.start()
    task = asyncio.create_task(collector.run(600))
    queue = list(reversed(msgs))
    accepted = 0
    start = time.time()

    async def worker() -> None:
        nonlocal accepted
        s = SmtpSession(pipe.smtp_port, pipe.args.recipients)
        await s.open()
        while queue:
            ok = await s.send(queue.pop())
            accepted += ok
        await s.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    accept_done = time.time()
    collector.expected = accepted
    await task
    delivered = len(collector.delivered_latencies())
    return {"accepted": accepted, "routed": len(collector.routed), "delivered": delivered,
            "bounced": len(collector.bounced),
            "to_deliver": len(collector.to_deliver),
            "accept_rate": accepted / (accept_done - start),
            "e2e_rate": len(collector.routed) / (collector.last_routed() - start),
            "delivery_rate": delivered / (collector.last_delivered() - start) if delivered else 0.0}


async def offered_load(pipe: Pipeline, msgs: list[bytes], rate: float, duration: float,
                       sessions: int, on_minute=None) -> dict:
    total = int(rate * duration)
    collector = Collector(pipe.broker.bootstrap, pipe.args.partitions, pipe.args.delivery)
    await collector.start()
    task = asyncio.create_task(collector.run(duration + 120))
    pool = [SmtpSession(pipe.smtp_port, pipe.args.recipients) for _ in range(sessions)]
    await asyncio.gather(*(s.open() for s in pool))
    free: asyncio.Queue[SmtpSession] = asyncio.Queue()
    for s in pool:
        free.put_nowait(s)
    start = time.monotonic()
    late = 0
    next_minute = start + 60

    accepted = 0

    async def one(raw: bytes) -> None:
        nonlocal accepted
        s = await free.get()
        try:
            ok = await s.send(raw)  # not `accepted += await ...`: that loses concurrent updates
            accepted += ok
        except ConnectionError as exc:
            SmtpSession.refusals[str(exc).encode()] = SmtpSession.refusals.get(str(exc).encode(), 0) + 1
            s = SmtpSession(pipe.smtp_port, pipe.args.recipients)
            await s.open()
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
    collector.expected = accepted
    await task
    for s in pool:
        await s.close()
    return {"offered": total, "accepted": accepted, "routed": len(collector.routed), "late_sends": late,
            "latencies": collector.routed_latencies(), "to_deliver": len(collector.to_deliver),
            "bounced": len(collector.bounced),
            "delivered": collector.delivered_latencies()}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def percentiles(values: list[float]) -> str:
    return ", ".join(f"p{int(q * 100)} {pct(values, q) * 1000:.0f} ms" for q in (.5, .95, .99))


def start_profiles(pipe: Pipeline, directory: Path) -> list[subprocess.Popen]:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    directory.mkdir(parents=True, exist_ok=True)
    return [subprocess.Popen([py_spy, "record", "--format", "raw", "--rate", "200", "--nonblocking",
                              "-p", str(p.popen.pid), "-o", str(directory / f"{p.name}.txt")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for p in pipe.procs if p.is_python]


def stop_profiles(profilers: list[subprocess.Popen]) -> None:
    for p in profilers:
        p.send_signal(signal.SIGINT)
    for p in profilers:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            stop_pid(p, 5)


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
    ap.add_argument("--no-delivery", dest="delivery", action="store_false",
                    help="leave out the delivery sink and the downstream server")
    ap.add_argument("--producer-max-batch-size", type=int, default=0,
                    help="POSTWARDEN_PRODUCER_MAX_BATCH_SIZE of the worker")
    ap.add_argument("--py-spy", type=Path, metavar="DIR",
                    help="write a py-spy profile (collapsed stacks) per process of phase 1 here")
    ap.add_argument("--recipients", type=int, default=1000, help="distinct recipient addresses")
    ap.add_argument("--workdir", type=Path, help="keep data and logs here instead of a temporary directory")
    ap.add_argument("--workers", type=int, default=1, help="Faust worker processes")
    ap.add_argument("--env", action="append", default=[], metavar="POSTWARDEN_X=VALUE",
                    help="a setting for every child process (repeatable)")
    ap.add_argument("--soak", type=float, default=0, help="seconds of offered load; prints memory growth")
    args = ap.parse_args()
    if any("=" not in e or not e.startswith("POSTWARDEN_") for e in args.env):
        ap.error("--env takes POSTWARDEN_NAME=VALUE")
    args.env = dict(e.split("=", 1) for e in args.env)

    msgs = load_messages(max(args.messages, int(args.rate * max(args.duration, args.soak))))
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=False)
    with contextlib.nullcontext(str(args.workdir)) if args.workdir else tempfile.TemporaryDirectory(
            prefix="pw-bench-") as tmp:
        pipe = Pipeline(Path(tmp), args)
        pipe.start()
        try:
            if args.soak:
                base = {p.name: p.rss_mb("VmRSS") for p in pipe.procs}

                def report(minute: int) -> None:
                    growth = ", ".join(f"{p.name} {p.rss_mb('VmRSS') - base[p.name]:+.1f} MB"
                                       for p in pipe.procs)
                    print(f"soak minute {minute}: RSS growth {growth} ({load()})", flush=True)

                res = asyncio.run(offered_load(pipe, msgs, args.rate, args.soak, args.concurrency, report))
                print(f"soak: offered {res['offered']}, routed {res['routed']}, "
                      f"delivered {len(res['delivered'])}/{res['to_deliver']}; routed "
                      f"{percentiles(res['latencies'])}; delivered {percentiles(res['delivered'])} ({load()})")
                return
            profilers = start_profiles(pipe, args.py_spy) if args.py_spy else []
            cpu0 = {p.name: p.cpu_seconds() for p in pipe.procs} | {"bench": bench_cpu_seconds()}
            res = asyncio.run(throughput(pipe, msgs[:args.messages], args.concurrency))
            cpu1 = {p.name: p.cpu_seconds() for p in pipe.procs} | {"bench": bench_cpu_seconds()}
            stop_profiles(profilers)
            pipe.check()
            n = max(1, res["routed"])
            print(f"throughput: {res['accepted']} accepted at {res['accept_rate']:.0f} msg/s (SMTP), "
                  f"{res['routed']} routed; sustained end to end {res['e2e_rate']:.0f} msg/s "
                  f"with {args.concurrency} sessions ({load()})")
            if args.delivery:
                print(f"delivery: {res['delivered']}/{res['to_deliver']} delivered downstream "
                      f"({res['bounced']} bounced), "
                      f"{res['delivery_rate']:.0f} msg/s from first accept to last 250")
            pipeline_cpu = sum(cpu1[k] - cpu0[k] for k in cpu0 if k != "bench")
            # The downstream server stands in for the provider's: it shares these cores
            # here, not in a deployment.
            own_cpu = pipeline_cpu - (cpu1.get("downstream", 0.0) - cpu0.get("downstream", 0.0))
            print("CPU ms per message: " + ", ".join(
                f"{name} {(cpu1[name] - cpu0[name]) * 1000 / n:.2f}" for name in cpu0)
                + f"; pipeline total {pipeline_cpu * 1000 / n:.2f}"
                + f" (Postwarden's own, without the downstream server: {own_cpu * 1000 / n:.2f})")
            lat = asyncio.run(offered_load(pipe, msgs, args.rate, args.duration, args.concurrency))
            print(f"latency at {args.rate:.0f} msg/s offered for {args.duration:.0f} s: "
                  f"{lat['accepted']}/{lat['offered']} accepted, {lat['routed']} routed, {percentiles(lat['latencies'])} "
                  f"(sends late by >50 ms: {lat['late_sends']}) ({load()})")
            if args.delivery:
                print(f"  to the downstream 250: {len(lat['delivered'])}/{lat['to_deliver']} delivered "
                      f"({lat['bounced']} bounced), "
                      f"{percentiles(lat['delivered'])}")
            pipe.check()
            print("peak memory: " + ", ".join(f"{p.name} {p.rss_mb():.0f} MB" for p in pipe.procs))
        finally:
            pipe.stop()


if __name__ == "__main__":
    main()
