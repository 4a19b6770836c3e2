"""Shared pieces of the delivery and notifier tests: settings, records, producing, running."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path

from kafka import KafkaProducer

from postwarden.config import Settings, load_settings
from postwarden.held_mail import seal_held
from postwarden.records import RoutedMessage, new_message_id
from postwarden.sealing import Sealer
from postwarden.topics import DELIVER, QUARANTINE


def settings_for(bootstrap: str, tmp_path: Path, tenants_file: Path, **extra: str) -> Settings:
    env = {
        "POSTWARDEN_BOOTSTRAP_SERVERS": bootstrap,
        "POSTWARDEN_DATA_DIR": str(tmp_path / "data"),
        "POSTWARDEN_TENANTS_FILE": str(tenants_file),
        "POSTWARDEN_DELIVERY_RETRY_DELAYS": "0.5,1,1,1",
        "POSTWARDEN_DELIVERY_TIMEOUT": "2",
        "POSTWARDEN_DELIVERY_COMMIT_SECONDS": "0.2",
        "POSTWARDEN_SMTP_HOSTNAME": "gw.test",
        "POSTWARDEN_NOTIFY_FROM": "postmaster@gw.test",
        "POSTWARDEN_PUBLIC_URL": "https://mc.test",
        "POSTWARDEN_NOTIFY_TICK_SECONDS": "0.1",
        **extra,
    }
    return load_settings(env)


def message(recipient: str = "ann@acme.test", mail_from: str = "bob@x.example",
            subject: str = "hello", action: str = "deliver", virus: str | None = None,
            received_at: float | None = None, score: float = 1.0) -> RoutedMessage:
    raw = (f"From: {mail_from}\r\nTo: {recipient}\r\nSubject: {subject}\r\n"
           "Date: Thu, 15 Jan 2027 08:00:00 +0000\r\n\r\nbody of the message\r\n").encode()
    return RoutedMessage(new_message_id(), "acme", recipient, mail_from, action,
                         "clean" if action == "deliver" else "spam", score, virus,
                         [] if action == "deliver" else ["spam"], [],
                         time.time() if received_at is None else received_at, raw)


def produce(bootstrap: str, records: list[RoutedMessage], sealer: Sealer | None = None) -> None:
    """Writes records as the policy agent would: held mail sealed (needs the sealer) to mail.quarantine."""
    producer = KafkaProducer(bootstrap_servers=[bootstrap], acks="all")
    try:
        for r in records:
            if r.action == "deliver":
                producer.send(DELIVER.name, key=r.tenant.encode(), value=r.encode())
            else:
                if sealer is None:
                    raise ValueError("held mail is sealed before mail.quarantine: pass a sealer")
                producer.send(QUARANTINE.name, key=r.recipient.encode(),
                              value=seal_held(sealer, r).encode())
        producer.flush(30)
    finally:
        producer.close()


class Running:
    """An in-process sink (delivery or notifier) run as a task, stopped cleanly."""

    def __init__(self, service) -> None:
        self.service = service
        self.stop = asyncio.Event()
        self.task: asyncio.Task | None = None

    async def __aenter__(self):
        self.task = asyncio.create_task(self.service.run(self.stop))
        await wait_until(lambda: self.service.ready or self.task.done(), 30)
        if self.task.done():
            self.task.result()
        return self.service

    async def __aexit__(self, *exc) -> None:
        self.stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self.task, 30)


async def wait_until(predicate, timeout: float, interval: float = 0.05) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if predicate():
            return True
        await asyncio.sleep(interval)
    return bool(predicate())


def logged(proc, msg: str) -> list[dict]:
    """The JSON log lines of a process (tests.conftest.Process) with this message."""
    out = []
    for line in proc.log().splitlines():
        if line.startswith("{") and json.loads(line).get("msg") == msg:
            out.append(json.loads(line))
    return out


def wait(predicate, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not predicate():
        time.sleep(interval)
    return predicate()
