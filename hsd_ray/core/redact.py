"""PII redaction of captured turns: what is queued, trained on and persisted never holds a user's email address, phone
number, payment card number, IP address or an API-key-like secret. Applied where a turn enters the loop (the reply
ledger, a replay) and again where it is written (data/turnlog.py).

Each kind is found by a pattern and, where one exists, confirmed by a check that a random string rarely passes:
- secret: known key shapes (OpenAI `sk-`, AWS `AKIA`, GitHub `ghp_`/`github_pat_`, Slack `xox?-`, Google `AIza`,
  JWTs, `Bearer <token>`) and the value of `api_key=`/`token:`/`password=`-style assignments (quoted or not);
- email: local@domain.tld, Unicode letters allowed (IDN mailboxes);
- card: 13-19 digits, optionally grouped by spaces or dashes, that pass the Luhn checksum;
- ip: IPv4 and IPv6 addresses that `ipaddress` parses (so 999.1.1.1 and 12:30:45 are left alone);
- phone: 7-15 digits written as a phone number: with a leading "+", an area code in parentheses, or grouped
  3-3-4 (North American); bare digit runs, dates and version numbers are not phones.
A found span is replaced by `[EMAIL]`, `[PHONE]`, `[CARD]`, `[IP]` or `[SECRET]`; replacing twice changes nothing.
Known misses and false alarms are counted on a labelled corpus in tests/unit/test_redact.py (e.g. a four-part
version string such as 1.2.3.4 is a valid IPv4 address and is redacted).

Pure: `re` and `ipaddress` only.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from dataclasses import replace

from hsd_ray.core.turns import Turn

KINDS = ("secret", "email", "card", "ip", "phone")
PLACEHOLDER = {kind: f"[{kind.upper()}]" for kind in KINDS}

_SECRET = re.compile(
    r"\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}"
    r"|\bAKIA[0-9A-Z]{16}\b"
    r"|\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36,}\b|\bgithub_pat_[A-Za-z0-9_]{40,}"
    r"|\bxox[abprs]-[A-Za-z0-9-]{10,}"
    r"|\bAIza[0-9A-Za-z_-]{35}"
    r"|\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"
    r"|(?<=\bBearer )[A-Za-z0-9._~+/=-]{16,}"
)
# the value of a credential assignment: api_key = "...", token: ..., PASSWORD=..., ?api_key=... in a URL
_ASSIGNED_SECRET = re.compile(
    r"(?i)\b(?:api[_-]?key|access[_-]?key|secret(?:[_-]?key)?|auth[_-]?token|access[_-]?token|token|password|passwd|pwd)"
    r"(?P<sep>\"?\s*[:=]\s*[\"']?)(?P<value>[^\s\"'&,;]{6,})"
)
_EMAIL = re.compile(r"(?<![\w.+-])[\w.%+-]+@[^\W_](?:[\w-]*[^\W_])?(?:\.[^\W_](?:[\w-]*[^\W_])?)*\.[^\W\d_]{2,}(?!\w)")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_IPV4 = re.compile(r"(?<![\w.])\d{1,3}(?:\.\d{1,3}){3}(?![\w]|\.\d)")
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
_PHONE = re.compile(
    r"(?<![\w+])(?:"
    r"\+\d{1,3}[\s.-]?(?:\(\d{1,4}\)[\s.-]?)?\d{1,4}(?:[\s.-]?\d{2,4}){1,4}"  # +CC ...
    r"|\(\d{2,4}\)[\s.-]?\d{3,4}[\s.-]?\d{3,4}"  # (AAA) BBB-CCCC
    r"|\d{3}[\s.-]\d{3}[\s.-]\d{4}"  # AAA-BBB-CCCC
    r")(?!\w)"
)


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def _secret_like(value: str) -> bool:
    """An assigned value that looks like a credential, not a word ("token: represents ..."): letters and digits, or
    12+ characters with mixed case or symbols."""
    if value == PLACEHOLDER["secret"]:
        return False
    letters, digits = any(c.isalpha() for c in value), any(c.isdigit() for c in value)
    mixed = any(c.isupper() for c in value) and any(c.islower() for c in value)
    return (letters and digits) or (len(value) >= 12 and (mixed or any(c in "_-./+=" for c in value)))


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def redact(text: str) -> tuple[str, Counter]:
    """`text` with every PII span replaced by its placeholder, and how many of each kind were replaced."""
    found: Counter = Counter()

    def sub(pattern: re.Pattern, kind: str, text: str, check=None, group: str | None = None) -> str:
        def one(m: re.Match) -> str:
            span = m.group(group) if group else m.group(0)
            if check is not None and not check(span):
                return m.group(0)
            found[kind] += 1
            return m.group(0).replace(span, PLACEHOLDER[kind]) if group else PLACEHOLDER[kind]

        return pattern.sub(one, text)

    text = sub(_SECRET, "secret", text)
    text = sub(_ASSIGNED_SECRET, "secret", text, check=_secret_like, group="value")
    text = sub(_EMAIL, "email", text)
    text = sub(_CARD, "card", text, check=lambda s: luhn_ok(re.sub(r"\D", "", s)))
    text = sub(_IPV4, "ip", text, check=_is_ip)
    text = sub(_IPV6, "ip", text, check=lambda s: any(c.isdigit() for c in s) and _is_ip(s))  # not C++'s a::b
    text = sub(_PHONE, "phone", text, check=lambda s: 7 <= len(re.sub(r"\D", "", s)) <= 15)
    return text, found


def redact_turn(turn: Turn) -> tuple[Turn, Counter]:
    """The turn with context, reply and follow-up redacted. When the reply itself changed, its served token ids and
    log-probs go too (they spell the redacted text): the turn is then trained on the redacted reply's tokens, like
    logged data."""
    found: Counter = Counter()

    def clean(text: str) -> str:
        out, n = redact(text)
        found.update(n)
        return out

    context = [{**m, "content": clean(m["content"])} for m in turn.context]
    reply, followup = clean(turn.reply), clean(turn.followup)
    if not found:
        return turn, found
    ids = (turn.reply_token_ids, turn.reply_logprobs) if reply == turn.reply else (None, None)
    return replace(turn, context=context, reply=reply, followup=followup, reply_token_ids=ids[0],
                   reply_logprobs=ids[1]), found
