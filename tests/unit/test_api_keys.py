"""Per-user API keys (core/api_keys.py) and a chat replica's identity rules (loop/identity.py)."""

from __future__ import annotations

import json

import pytest

from hsd_ray.core.api_keys import KeyRing, append_record, new_key
from hsd_ray.loop import openai_api as oa
from hsd_ray.loop.identity import Identity

pytestmark = pytest.mark.unit


def test_keys_are_stored_as_salted_hashes_and_name_their_user(tmp_path):
    path = tmp_path / "keys.jsonl"
    alice_key, alice = new_key("alice")
    bob_key, bob = new_key("bob")
    append_record(path, alice)
    append_record(path, bob)
    text = path.read_text()
    assert alice_key not in text and alice_key.split("_", 2)[2] not in text  # never the key, nor its secret
    assert (path.stat().st_mode & 0o777) == 0o600
    assert json.loads(text.splitlines()[0])["salt"] != json.loads(text.splitlines()[1])["salt"]
    ring = KeyRing.load(path)
    assert ring.user_for(f"Bearer {alice_key}") == "alice" and ring.user_for(f"bearer  {bob_key} ") == "bob"
    forged = alice_key[:-1] + ("A" if alice_key[-1] != "A" else "B")
    wrong_id = f"hsd_{bob.key_id}_{alice_key.split('_', 2)[2]}"  # alice's secret under bob's id
    for bad in (None, "", "Bearer", f"Basic {alice_key}", f"Bearer {forged}", f"Bearer {wrong_id}", "Bearer hsd_x_y",
                "Bearer sk-something"):
        assert ring.user_for(bad) is None, bad
    with pytest.raises(ValueError):
        new_key(" alice")


def test_identity_open_trusts_the_user_field_and_api_keys_the_key(tmp_path):
    key, record = new_key("carol")
    append_record(tmp_path / "k", record)
    open_mode = Identity("open", None)
    assert open_mode.key_user(None) is None and open_mode.user_id(None, "anyone", None) == "anyone"
    with pytest.raises(oa.APIError) as e:
        open_mode.own_user(f"Bearer {key}")  # no self-service data routes when identity is just a claim
    assert e.value.code == "auth_mode_open"
    keyed = Identity("api_keys", str(tmp_path / "k"))
    auth = f"Bearer {key}"
    assert keyed.key_user(auth) == "carol" and keyed.own_user(auth) == "carol"
    assert keyed.user_id("carol", None, auth) == keyed.user_id("carol", " carol ", auth) == "carol"
    for bad_auth in (None, "Bearer nope"):
        with pytest.raises(oa.APIError) as e:
            keyed.key_user(bad_auth)
        assert e.value.status_code == 401 and e.value.code == "invalid_api_key"
    with pytest.raises(oa.APIError) as e:
        keyed.user_id("carol", "dave", auth)  # a forged user field: refused, not silently used
    assert e.value.status_code == 400 and e.value.param == "user"


def test_demo_users_keys_are_minted_per_job_and_accepted_beside_the_key_file(tmp_path):
    from hsd_ray.loop.users import DemoUsers

    key, record = new_key("carol")
    append_record(tmp_path / "k", record)
    demo = DemoUsers(2, with_keys=True)
    assert [r.user for r in demo.key_records] == demo.names == ["demo-0", "demo-1"]
    assert all(k not in repr(demo.key_records) for k in demo._keys)  # the records are salted hashes only
    keyed = Identity("api_keys", str(tmp_path / "k"), demo.key_records)
    assert [keyed.key_user(f"Bearer {k}") for k in (key, *demo._keys)] == ["carol", "demo-0", "demo-1"]
    assert Identity("api_keys", str(tmp_path / "k")).keys.user_for(f"Bearer {demo._keys[0]}") is None
    assert DemoUsers(2, with_keys=False).key_records == ()
    assert DemoUsers(2, with_keys=True)._keys[0] != demo._keys[0]  # minted afresh for each job, never a fixed key


def test_keys_cli_adds_and_lists(tmp_path, capsys):
    from hsd_ray.keys import main

    path = str(tmp_path / "keys.jsonl")
    assert main(["add", "--file", path, "--user", "erin"]) == 0
    key = capsys.readouterr().out.strip()
    assert KeyRing.load(path).user_for(f"Bearer {key}") == "erin"
    assert main(["list", "--file", path]) == 0 and "erin" in capsys.readouterr().out


def test_api_keys_mode_needs_a_key_file():
    from hsd_ray.config import Config, ConfigError

    assert Config().auth.mode == "open"
    with pytest.raises(ConfigError, match="keys_file"):
        Config.load(overrides=["auth.mode=api_keys"])
