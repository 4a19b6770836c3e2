"""Tenant and process options of delivery and notifications: defaults and clear refusals."""

from __future__ import annotations

import pytest

from postwarden.config import ConfigError, load_settings, load_tenants
from sinks.retry_schedule import RetrySchedule
from postwarden.topics import DELIVER_RETRY_TIERS
from tests.smtp_servers import tenants_yaml


def test_defaults(tmp_path):
    t = load_tenants(tenants_yaml(tmp_path / "t.yaml", [{"host": "mx.acme.test"}])).get("acme")
    assert t.max_retry_days == 5 and t.downstream[0].max_connections == 10
    s = load_settings({})
    assert s.retry_delays == [60, 600, 3600, 14400] and s.notify_from == "postmaster@postwarden.localhost"


@pytest.mark.parametrize("options, field", [
    ({"max_retry_days": 0}, "max_retry_days"),
    ({"max_retry_days": 31}, "max_retry_days"),
    ({"max_retry_days": "soon"}, "max_retry_days"),
])
def test_bad_tenant_options_are_refused(tmp_path, options, field):
    with pytest.raises(ConfigError, match=field):
        load_tenants(tenants_yaml(tmp_path / "t.yaml", [{"host": "mx.acme.test"}], **options))


@pytest.mark.parametrize("value", [0, 501, "many"])
def test_bad_connection_limits_are_refused(tmp_path, value):
    with pytest.raises(ConfigError, match="downstream.0.max_connections"):
        load_tenants(tenants_yaml(tmp_path / "t.yaml", [{"host": "mx", "max_connections": value}]))


@pytest.mark.parametrize("env, message", [
    ({"POSTWARDEN_DELIVERY_RETRY_DELAYS": "60,600"}, "must list 4 delays"),
    ({"POSTWARDEN_DELIVERY_RETRY_DELAYS": "600,60,1,2"}, "non-decreasing"),
    ({"POSTWARDEN_DELIVERY_RETRY_DELAYS": "a,b,c,d"}, "comma-separated seconds"),
    ({"POSTWARDEN_DELIVERY_RETRY_DELAYS": "0,1,2,3"}, "positive"),
    ({"POSTWARDEN_NOTIFY_FROM": "not an address"}, "POSTWARDEN_NOTIFY_FROM"),
    ({"POSTWARDEN_DELIVERY_TIMEOUT": "0"}, "POSTWARDEN_DELIVERY_TIMEOUT"),
    ({"POSTWARDEN_NOTIFY_TICK_SECONDS": "-1"}, "POSTWARDEN_NOTIFY_TICK_SECONDS"),
])
def test_bad_settings_are_refused(env, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(env)


def test_backoff_grows_then_repeats_and_stops_at_the_tenant_maximum():
    schedule = RetrySchedule([60, 600, 3600, 14400])
    first = 1000.0
    plans = [schedule.next(n, first, 5, first + 10) for n in range(1, 7)]
    assert [p.due_at - (first + 10) for p in plans] == [60, 600, 3600, 14400, 14400, 14400]
    assert [p.topic for p in plans[:4]] == list(DELIVER_RETRY_TIERS)
    deadline = first + 5 * 86400
    assert schedule.next(9, first, 5, deadline - 30).due_at == deadline  # last try at the deadline
    assert schedule.next(10, first, 5, deadline) is None
    with pytest.raises(ValueError):
        RetrySchedule([1, 2])
