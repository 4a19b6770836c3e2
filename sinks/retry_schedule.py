"""When a temporarily failed delivery is tried again, and when it is given up.

A failed attempt n (1-based) waits in retry tier min(n, tiers): the delays grow
with the tier and then repeat the last one. Retries stop at the tenant's
max_retry_days counted from the first attempt; the last wait is shortened so
one attempt happens at that deadline before the message is bounced.
"""

from __future__ import annotations

from dataclasses import dataclass

from postwarden.records import RoutedMessage, _Record
from postwarden.topics import DELIVER_RETRY_TIERS, TopicSpec


@dataclass(frozen=True, slots=True)
class DeliveryRetry(_Record):
    """A message waiting in a retry tier (mail.deliver.retry.N, key: tenant).

    The metadata sits beside the encoded message so the queue view can read it
    without decoding the mail itself.
    """

    message_id: str
    tenant: str
    destination: str
    received_at: float
    first_attempt_at: float
    attempt: int  # attempts made so far
    due_at: float
    last_reply: str
    routed: bytes  # RoutedMessage.encode()

    def message(self) -> RoutedMessage:
        return RoutedMessage.decode(self.routed)


@dataclass(frozen=True)
class RetryPlan:
    topic: TopicSpec
    due_at: float


class RetrySchedule:
    def __init__(self, delays: list[float]) -> None:
        if len(delays) != len(DELIVER_RETRY_TIERS):
            raise ValueError(f"need {len(DELIVER_RETRY_TIERS)} delays, got {len(delays)}")
        self.delays = delays

    def next(self, attempts_made: int, first_attempt_at: float, max_retry_days: float,
             now: float) -> RetryPlan | None:
        """Where the message waits after its attempts_made-th failure; None: give up (bounce)."""
        deadline = first_attempt_at + max_retry_days * 86400.0
        if now >= deadline:
            return None
        tier = min(attempts_made, len(self.delays)) - 1
        return RetryPlan(DELIVER_RETRY_TIERS[tier], min(now + self.delays[tier], deadline))
