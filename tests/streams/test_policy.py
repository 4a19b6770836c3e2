"""Per-user policy decisions: settings over tenant defaults, lists, levels, virus and OFF."""

from __future__ import annotations

import pytest

from postwarden.config import load_tenants
from postwarden.records import Verdict
from postwarden.users import (
    SettingsError, UserRecord, apply_command, effective, new_command, validate_patch,
)
from streams.policy import decide, threshold

TENANT = load_tenants(None).get("example")


def verdict(spam: float = 0.0, sender: str = "someone@sender.example", virus: str | None = None,
            categories: list[str] | None = None, **scores: float) -> Verdict:
    return Verdict(message_id="m1", tenant="example", recipient="ann@example.com", mail_from=sender,
                   received_at=0.0, size=10, spam_score=spam, category_scores={"spam": spam, **scores},
                   categories=categories or [], virus=virus, rules=[], scorer="test", raw=b"")


def user(**patch) -> UserRecord:
    return apply_command(None, new_command("example", "ann@example.com", "upsert", patch), now=1.0)


def test_new_user_inherits_the_tenant_default_user():
    s = effective(None, TENANT)
    assert s.filtering and s.levels["spam"] == "moderate"
    assert decide(verdict(49.9), TENANT, s) == ("deliver", "clean")
    assert decide(verdict(50.0), TENANT, s) == ("quarantine", "spam")


def test_levels_map_to_thresholds_scaled_by_the_tenant_threshold():
    assert [threshold(level, TENANT) for level in ("lenient", "moderate", "aggressive", "most_aggressive")] \
        == [75.0, 50.0, 30.0, 15.0]
    assert threshold("off", TENANT) is None
    lenient = effective(user(levels={"spam": "lenient"}), TENANT)
    assert decide(verdict(60), TENANT, lenient) == ("deliver", "clean")
    strict = effective(user(levels={"spam": "most_aggressive"}), TENANT)
    assert decide(verdict(20), TENANT, strict) == ("quarantine", "spam")
    no_spam_filter = effective(user(levels={"spam": "off"}), TENANT)
    assert decide(verdict(100), TENANT, no_spam_filter) == ("deliver", "clean")


def test_each_category_has_its_own_level():
    s = effective(user(levels={"bulk": "aggressive"}), TENANT)
    assert decide(verdict(10, bulk=35), TENANT, s) == ("quarantine", "bulk")
    assert decide(verdict(10, bulk=25), TENANT, s) == ("deliver", "clean")
    # phishing is aggressive by the tenant default
    assert decide(verdict(0, phishing=31), TENANT, effective(None, TENANT)) == ("quarantine", "phishing")


def test_virus_is_always_quarantined_whatever_the_settings():
    for s in (effective(user(filtering=False), TENANT),
              effective(user(allow=["someone@sender.example"]), TENANT),
              effective(user(levels={"spam": "off"}), TENANT)):
        assert decide(verdict(0, virus="Eicar"), TENANT, s) == ("quarantine", "virus")


def test_filtering_off_delivers_everything_but_viruses_and_on_again_filters():
    off = user(filtering=False)
    assert decide(verdict(100), TENANT, effective(off, TENANT)) == ("deliver", "filtering_off")
    assert decide(verdict(100, sender="x@blocked.example"), TENANT,
                  effective(apply_command(off, new_command("example", "ann@example.com", "upsert",
                                                           {"block": ["blocked.example"]}), 2.0), TENANT)) \
        == ("deliver", "filtering_off")
    on = apply_command(off, new_command("example", "ann@example.com", "upsert", {"filtering": None}), 2.0)
    assert decide(verdict(100), TENANT, effective(on, TENANT)) == ("quarantine", "spam")


def test_allow_list_beats_score_and_block_list_quarantines():
    s = effective(user(allow=["friend@sender.example", "@partner.example"],
                       block=["sender.example", "bad@partner.example"]), TENANT)
    assert decide(verdict(99, sender="friend@sender.example"), TENANT, s) == ("deliver", "allowed_sender")
    assert decide(verdict(99, sender="x@mail.partner.example"), TENANT, s) == ("deliver", "allowed_sender")
    # the more specific address beats the listed domain, both ways
    assert decide(verdict(0, sender="other@sender.example"), TENANT, s) == ("quarantine", "blocked_sender")
    assert decide(verdict(0, sender="bad@partner.example"), TENANT, s) == ("quarantine", "blocked_sender")
    both = effective(user(allow=["x.example"], block=["x.example"]), TENANT)
    assert decide(verdict(0, sender="a@x.example"), TENANT, both) == ("quarantine", "blocked_sender")


def test_unknown_tenant_and_unparseable_mail_are_held():
    assert decide(verdict(0), None, None) == ("quarantine", "unknown_tenant")
    assert decide(verdict(0, categories=["unparseable"]), TENANT, effective(None, TENANT)) \
        == ("quarantine", "unparseable")


def test_allow_sender_command_moves_the_sender_off_the_block_list():
    u = user(block=["a@b.example"])
    u = apply_command(u, new_command("example", "ann@example.com", "allow_sender", {"sender": "A@B.example"}), 3.0)
    assert u.allow == ["a@b.example"] and u.block == []


def test_a_new_password_ends_existing_sessions_and_remove_deletes():
    u = user()
    u2 = apply_command(u, new_command("example", "ann@example.com", "upsert", password_hash="scrypt$x"), 2.0)
    assert u2.password_hash == "scrypt$x" and u2.session_version == u.session_version + 1
    assert apply_command(u2, new_command("example", "ann@example.com", "remove"), 3.0) is None


def test_level_default_returns_a_category_to_the_tenant_default():
    u = user(levels={"spam": "off"})
    u = apply_command(u, new_command("example", "ann@example.com", "upsert", {"levels": {"spam": "default"}}), 2.0)
    assert "spam" not in u.levels and effective(u, TENANT).levels["spam"] == "moderate"


@pytest.mark.parametrize("patch, words", [
    ({"filtering": "yes"}, "filtering must be true, false or null"),
    ({"levels": {"spam": "extreme"}}, "levels.spam: 'extreme' is not one of"),
    ({"levels": {"Bad Category": "moderate"}}, "is not a category name"),
    ({"allow": ["not an address"]}, "neither an email address nor a domain"),
    ({"block": "x.example"}, "block must be a list"),
    ({"colour": "blue"}, "unknown settings: colour"),
    ({"allow": [f"a{i}@x.example" for i in range(1001)]}, "at most 1000 entries"),
])
def test_bad_settings_are_refused_with_a_clear_error(patch, words):
    with pytest.raises(SettingsError, match=words):
        validate_patch(patch)


def test_bad_command_operation_is_refused():
    with pytest.raises(SettingsError, match="unknown operation"):
        new_command("example", "ann@example.com", "promote")
