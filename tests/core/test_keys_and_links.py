import json

import pytest

from postwarden.config import ConfigError, load_settings
from postwarden import internal_api
from postwarden.keyring import Keyring, rotate
from postwarden.signed_links import LinkError, sign, verify


def test_keys_file_is_generated_private_and_stable(tmp_path):
    s = load_settings({"POSTWARDEN_DATA_DIR": str(tmp_path)})
    ring = s.keyring()
    path = tmp_path / "keys.json"
    assert path.stat().st_mode & 0o777 == 0o600
    assert s.keyring().derive("quarantine", "t1") == ring.derive("quarantine", "t1")


def test_derived_keys_differ_by_tenant_and_purpose(tmp_path):
    ring = Keyring.load_or_create(tmp_path / "k.json")
    keys = {ring.derive(p, t)[1] for p in ("quarantine", "links") for t in ("a", "b")}
    assert len(keys) == 4


def test_rotation_keeps_old_keys_readable(tmp_path):
    path = tmp_path / "k.json"
    old = Keyring.load_or_create(path)
    kid, key = old.derive("quarantine", "t")
    new_id = rotate(path)
    ring = Keyring.load(path)
    assert ring.current_id == new_id != kid
    assert ring.derive("quarantine", "t", kid) == (kid, key)
    assert ring.derive("quarantine", "t")[1] != key


def test_internal_token_of_the_previous_key_is_accepted_after_rotation(tmp_path):
    path = tmp_path / "k.json"
    before = Keyring.load_or_create(path)
    old_token = internal_api.token(before)
    rotate(path)
    after = Keyring.load(path)
    # A worker restarted with the new keys file still serves a front signing with the old key.
    assert internal_api.authorized(after, old_token)
    assert internal_api.authorized(after, internal_api.token(after))
    assert not internal_api.authorized(before, internal_api.token(after))
    assert not internal_api.authorized(after, None)
    altered = old_token[:-1] + ("0" if old_token[-1] != "0" else "1")
    assert not internal_api.authorized(after, altered)


@pytest.mark.parametrize("content, words", [
    ("not json", "expected"),
    (json.dumps({"master_keys": []}), "no master keys"),
    (json.dumps({"master_keys": [{"id": "k1", "key": "c2hvcnQ="}]}), "at least 32 bytes"),
    (json.dumps({"master_keys": [{"id": "k1", "key": "!!"}]}), "expected"),
])
def test_bad_keys_file_is_named(tmp_path, content, words):
    path = tmp_path / "keys.json"
    path.write_text(content)
    with pytest.raises(ConfigError) as err:
        Keyring.load(path)
    assert str(path) in str(err.value) and words in str(err.value)


def test_links_verify_expire_and_resist_tampering(tmp_path):
    path = tmp_path / "k.json"
    ring = Keyring.load_or_create(path)
    token = sign(ring, "acme", "release", {"m": "id1", "r": "u@acme.example"}, 3600, now=1000)
    assert verify(ring, token, "release", now=2000) == ("acme", {"m": "id1", "r": "u@acme.example"})
    with pytest.raises(LinkError, match="expired"):
        verify(ring, token, "release", now=5000)
    with pytest.raises(LinkError, match="another action"):
        verify(ring, token, "sso", now=2000)
    body, mac = token.split(".")
    forged = sign(ring, "other", "release", {"m": "id1", "r": "u@acme.example"}, 3600, now=1000)
    with pytest.raises(LinkError, match="does not match"):
        verify(ring, forged.split(".")[0] + "." + mac, "release", now=2000)
    with pytest.raises(LinkError, match="malformed"):
        verify(ring, "garbage", "release", now=2000)
    # After rotation an old link still verifies until it expires; retiring the key kills it.
    rotate(path)
    assert verify(Keyring.load(path), token, "release", now=2000)[0] == "acme"
    data = json.loads(path.read_text())
    data["master_keys"] = data["master_keys"][:1]
    path.write_text(json.dumps(data))
    with pytest.raises(LinkError, match="retired"):
        verify(Keyring.load(path), token, "release", now=2000)
