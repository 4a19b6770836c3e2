"""Delivery status notifications (RFC 3464) for mail that could not be delivered.

The report is multipart/report; report-type=delivery-status with three parts:
a human-readable explanation (multipart/alternative, text and HTML), the
machine-readable message/delivery-status, and the original's headers
(text/rfc822-headers, never its body).
"""

from __future__ import annotations

import html
from datetime import datetime, timezone
from email.message import Message, MIMEPart
from email.mime.multipart import MIMEMultipart
from email.policy import SMTP
from email.utils import format_datetime

from postwarden.records import RoutedMessage
from sinks.generated_mail import derived_id, stamp


def dsn_message_id(original: RoutedMessage) -> str:
    return derived_id("dsn", original.message_id, original.recipient)


def build_dsn(original: RoutedMessage, status: str, diagnostic: str, remote_mta: str | None,
              hostname: str, now: float) -> bytes:
    """The bounce for one recipient of original; status is an RFC 3463 code like 5.1.1."""
    if not original.mail_from:
        raise ValueError("no DSN for a null sender")
    expired = status == "4.4.7"
    reason = ("it could not be delivered before the retry period ended" if expired
              else "the receiving server refused it")
    text = (
        "This is the mail system at "
        f"{hostname}.\n\nYour message could not be delivered to {original.recipient}: "
        f"{reason}.\n\n"
        f"    Recipient: {original.recipient}\n"
        f"    Status:    {status}\n"
        f"    Reason:    {diagnostic}\n\n"
        "The headers of your message are attached. The message itself was not kept.\n"
    )
    html_part = (
        "<html><body>"
        f"<p>This is the mail system at {html.escape(hostname)}.</p>"
        f"<p>Your message could not be delivered to <b>{html.escape(original.recipient)}</b>: "
        f"{reason}.</p>"
        "<table>"
        f"<tr><th align=left>Recipient</th><td>{html.escape(original.recipient)}</td></tr>"
        f"<tr><th align=left>Status</th><td>{html.escape(status)}</td></tr>"
        f"<tr><th align=left>Reason</th><td>{html.escape(diagnostic)}</td></tr>"
        "</table>"
        "<p>The headers of your message are attached. The message itself was not kept.</p>"
        "</body></html>"
    )
    readable = MIMEPart(policy=SMTP)
    readable.set_content(text)
    readable.add_alternative(html_part, subtype="html")

    per_message = Message(policy=SMTP)
    per_message["Reporting-MTA"] = f"dns; {hostname}"
    per_message["X-Postwarden-Message-ID"] = original.message_id
    per_message["Arrival-Date"] = _date(original.received_at)
    per_recipient = Message(policy=SMTP)
    per_recipient["Final-Recipient"] = f"rfc822; {original.recipient}"
    per_recipient["Action"] = "failed"
    per_recipient["Status"] = status
    if remote_mta:
        per_recipient["Remote-MTA"] = f"dns; {remote_mta}"
    per_recipient["Diagnostic-Code"] = f"smtp; {diagnostic}"
    per_recipient["Last-Attempt-Date"] = _date(now)
    status_part = Message(policy=SMTP)
    status_part["Content-Type"] = "message/delivery-status"
    status_part.set_payload([per_message, per_recipient])

    headers = original.raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    headers_part = MIMEPart(policy=SMTP)
    headers_part.set_content(headers.decode("utf-8", "replace") + "\n", subtype="rfc822-headers")

    report = MIMEMultipart("report", policy=SMTP, report_type="delivery-status")
    stamp(report, f"Mail Delivery System <MAILER-DAEMON@{hostname}>", original.mail_from,
          "Undelivered Mail Returned to Sender", dsn_message_id(original), hostname, now)
    report.attach(readable)
    report.attach(status_part)
    report.attach(headers_part)
    return report.as_bytes()


def _date(ts: float) -> str:
    return format_datetime(datetime.fromtimestamp(ts, timezone.utc))
