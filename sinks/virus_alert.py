"""The notice a user gets right away when mail to them was held for a virus.

It names the sender, subject, date and virus; it never carries the message or
any part of it, and offers no release link (infected mail is not released
from a mail client).
"""

from __future__ import annotations

import html

from sinks.generated_mail import HeldSummary, alternative, derived_id, format_time


def alert_message_id(held: HeldSummary) -> str:
    return derived_id("virus-alert", held.message_id, held.recipient)


def build_alert(held: HeldSummary, sender: str, hostname: str, now: float) -> bytes:
    if not held.virus:
        raise ValueError("virus alerts are only for mail held for a virus")
    rows = [("From", held.sender or "(unknown sender)"), ("Subject", held.subject),
            ("Date", format_time(held.date or held.received_at)), ("Virus", held.virus)]
    text = ("A message sent to you contained a virus and was not delivered.\n\n"
            + "".join(f"    {k + ':':9} {v}\n" for k, v in rows)
            + "\nIt is kept in quarantine and will be deleted automatically. "
              "You do not need to do anything.\n")
    body = "".join(f"<tr><th align=left>{k}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    html_part = ("<html><body><p>A message sent to you contained a virus and was not "
                 f"delivered.</p><table>{body}</table><p>It is kept in quarantine and will be "
                 "deleted automatically. You do not need to do anything.</p></body></html>")
    return alternative(sender, held.recipient, "Virus alert: a message to you was blocked",
                       text, html_part, alert_message_id(held), hostname, now)
