"""PII redaction (core/redact.py): a labelled corpus with false positives and false negatives counted per kind, the
placeholders, idempotence, and what redaction does to a turn's served token ids."""

from __future__ import annotations

from collections import Counter

import pytest

from hsd_ray.core.redact import KINDS, luhn_ok, redact, redact_turn
from hsd_ray.core.turns import Turn

pytestmark = pytest.mark.unit

# (text, the PII it holds by kind). Includes code blocks, URLs and non-ASCII text, and look-alikes that are not PII.
CORPUS: list[tuple[str, dict]] = [
    # --- emails
    ("Write to jane.doe@example.com for details.", {"email": 1}),
    ("Mon adresse est élodie.müller@exämple.fr, merci.", {"email": 1}),
    ("Contact: <a href=\"mailto:bob+news@mail.co.uk\">Bob</a>", {"email": 1}),
    ("```python\nsend(to='ops-team@corp.io', body=msg)\n```", {"email": 1}),
    ("我的邮箱是 wang.wei@example.cn 谢谢", {"email": 1}),
    # --- phones
    ("Call me at +1 (415) 555-2671 tomorrow.", {"phone": 1}),
    ("My number is 415-555-2671.", {"phone": 1}),
    ("Ruf an: +49 30 12345678", {"phone": 1}),
    ("Office (020) 7946 0958, ask for Sam.", {"phone": 1}),
    ("Телефон: +7 495 123-45-67", {"phone": 1}),
    # --- cards (Luhn-valid)
    ("Card 4111 1111 1111 1111 exp 12/29", {"card": 1}),
    ("charge 5500-0000-0000-0004 please", {"card": 1}),
    ("amex 378282246310005", {"card": 1}),
    # --- IP addresses
    ("The server is at 192.168.1.20, port 22.", {"ip": 1}),
    ("curl http://10.0.0.5:8080/api/v1/items", {"ip": 1}),
    ("ping fe80::1ff:fe23:4567:890a from the host", {"ip": 1}),
    ("localhost is ::1 in IPv6", {"ip": 1}),
    # --- secrets
    ("my key is sk-proj-a1B2c3D4e5F6g7H8i9J0k1L2m3N4", {"secret": 1}),
    ("export AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE", {"secret": 1}),
    ("token ghp_0123456789abcdefghijABCDEFGHIJ0123456789 leaked", {"secret": 1}),
    ("Authorization: Bearer 9f8e7d6c5b4a39281706f5e4d3c2b1a0", {"secret": 1}),
    ("```json\n{\"password\": \"hunter22\", \"user\": \"al\"}\n```", {"secret": 1}),
    ("https://api.example.com/data?api_key=Zx81Qw77Lp&format=json", {"secret": 1}),
    ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U", {"secret": 1}),
    # --- several in one
    ("Reach ana@x.org or +44 20 7946 0958; VPN 172.16.0.4", {"email": 1, "phone": 1, "ip": 1}),
    # --- not PII
    ("The meeting is on 2024-01-15 at 10:30:45.", {}),
    ("Upgrade to version 2.3.1 and restart.", {}),
    ("It costs $1,299.99 or 1299 euros.", {}),
    ("Order #1234567890 shipped.", {}),
    ("std::vector<int> v; auto it = v.begin();", {}),
    ("Use the hex colour #ff8800 and id 3f2a9c1e-0b7d-4e55-9a61-1c2d3e4f5a6b.", {}),
    ("Each token: represents a piece of a word.", {}),
    ("In 1969, 3 astronauts flew 384400 km; pi is 3.14159.", {}),
    ("Follow @openai on social media.", {}),
    ("git commit 9fceb02d0ae598e95dc970b74767f19372d61af8", {}),
    ("The answer is 2+2=4 and 10 - 3 = 7.", {}),
    ("Room 12, floor 3, building 7.", {}),
    ("The temperature rose +15.3 degrees.", {}),
    ("ISBN 978-0-306-40615-7", {}),
    ("MAC 00:1A:2B:3C:4D:5E on eth0", {}),
    # --- known false positive: a four-part version string is a valid IPv4 address
    ("Requires driver 1.2.3.4 or newer.", {}),
]
# What the redactor gets wrong on this corpus, by kind (a change that moves these must update them on purpose).
KNOWN = {"false_positive": {"ip": 1}, "false_negative": {}}


def _confusion() -> tuple[Counter, Counter, Counter]:
    tp, fp, fn = Counter(), Counter(), Counter()
    for text, truth in CORPUS:
        _, found = redact(text)
        for kind in KINDS:
            want, got = truth.get(kind, 0), found.get(kind, 0)
            tp[kind] += min(want, got)
            fp[kind] += max(0, got - want)
            fn[kind] += max(0, want - got)
    return tp, fp, fn


def test_corpus_false_positives_and_negatives_are_the_known_ones():
    tp, fp, fn = _confusion()
    assert dict(+fp) == KNOWN["false_positive"], [(t, redact(t)) for t, _ in CORPUS]
    assert dict(+fn) == KNOWN["false_negative"], [(t, redact(t)) for t, _ in CORPUS]
    assert all(tp[k] >= 3 for k in KINDS), tp  # every kind is exercised


def test_placeholders_leave_no_trace_and_redacting_twice_changes_nothing():
    text = "mail a.b@c.de, call 415-555-2671, card 4111111111111111, ip 8.8.8.8, key sk-abcdefghijklmnopqrstuvwx"
    out, found = redact(text)
    assert out == "mail [EMAIL], call [PHONE], card [CARD], ip [IP], key [SECRET]"
    assert found == Counter({k: 1 for k in KINDS})
    assert redact(out) == (out, Counter())
    assert redact("password = [SECRET]") == ("password = [SECRET]", Counter())


def test_luhn():
    assert luhn_ok("4111111111111111") and luhn_ok("378282246310005")
    assert not luhn_ok("4111111111111112") and not redact("4111 1111 1111 1112")[1]


def test_redacted_turn_drops_the_served_ids_only_when_the_reply_changed():
    clean = Turn(context=[{"role": "user", "content": "hi, I'm al@x.org"}], reply="Hello!", followup="call 415-555-2671",
                 reply_token_ids=[1, 2], reply_logprobs=[-0.1, -0.2])
    turn, found = redact_turn(clean)
    assert found == Counter({"email": 1, "phone": 1})
    assert turn.context[0]["content"] == "hi, I'm [EMAIL]" and turn.followup == "call [PHONE]"
    assert turn.reply_token_ids == [1, 2] and turn.reply_logprobs == [-0.1, -0.2] and turn.turn_id == clean.turn_id
    leaky = Turn(context=[{"role": "user", "content": "my ip?"}], reply="It is 8.8.4.4.", followup="thanks",
                 reply_token_ids=[5, 6, 7], reply_logprobs=[-1.0, -1.0, -1.0])
    turn, _ = redact_turn(leaky)
    assert turn.reply == "It is [IP]." and turn.reply_token_ids is None and turn.reply_logprobs is None
    assert redact_turn(turn)[0] is turn  # nothing left: the same object back
