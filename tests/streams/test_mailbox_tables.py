"""The worker's tables (streams.mailbox) and how Faust treats their changelog topics."""

from __future__ import annotations

from streams import mailbox


def test_no_changelog_is_taken_for_a_stream_faust_checks_for_liveness():
    # Faust's liveness check reports a partition of a topic with acks on as a stalled
    # stream when it has unread records and no agent has read any: the table writes.
    tables = [mailbox.users, mailbox.quarantine_index, mailbox.quarantine_messages]
    assert {t.changelog_topic.get_topic_name() for t in tables} == {
        "mail.users-changelog", "mail.quarantine-index-changelog", "mail.quarantine-store-changelog"}
    for table in tables:
        assert table.changelog_topic.acks is False, table.changelog_topic.get_topic_name()
