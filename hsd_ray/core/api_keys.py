"""Per-user API keys: who is chatting, when `auth.mode` is `api_keys`.

A key is `hsd_<key id>_<secret>`: 8 hex digits that name its record, then 43 URL-safe characters of randomness
(256 bits). The key file (`auth.keys_file`, JSON lines, written by `python -m hsd_ray.keys add`) holds one record per
key — key id, user, a random salt and SHA-256(salt + secret) — never the key itself. A salted fast hash is enough
here: the secret is random and long, so there is nothing to guess by brute force (slow password hashes exist for
short human-chosen secrets). A lookup is one dictionary access by key id and one constant-time comparison.

Pure: hashlib, hmac, secrets, json.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path

PREFIX = "hsd"


@dataclass(frozen=True)
class KeyRecord:
    key_id: str
    user: str
    salt: str  # hex
    digest: str  # hex SHA-256 of salt bytes + secret
    created_at: float = 0.0


def _digest(salt_hex: str, secret: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt_hex) + secret.encode()).hexdigest()


def new_key(user: str) -> tuple[str, KeyRecord]:
    """A fresh key for `user` and the record to store (the key is shown once and never stored)."""
    if not user or user != user.strip():
        raise ValueError("user must be a non-empty name without surrounding spaces")
    key_id, secret, salt = secrets.token_hex(4), secrets.token_urlsafe(32), secrets.token_hex(16)
    return f"{PREFIX}_{key_id}_{secret}", KeyRecord(key_id, user, salt, _digest(salt, secret), time.time())


def bearer_token(authorization: str | None) -> str | None:
    scheme, _, token = (authorization or "").strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


class KeyRing:
    """The records of a key file, by key id."""

    def __init__(self, records: list[KeyRecord]):
        self.records = {r.key_id: r for r in records}

    @classmethod
    def load(cls, path: str | Path) -> "KeyRing":
        records = []
        for n, line in enumerate(Path(path).read_text().splitlines(), 1):
            if line.strip():
                try:
                    records.append(KeyRecord(**json.loads(line)))
                except (ValueError, TypeError) as e:
                    raise ValueError(f"{path}:{n}: not a key record ({e})") from None
        return cls(records)

    def user_for(self, authorization: str | None) -> str | None:
        """The user a `Bearer <key>` header belongs to, or None (missing, malformed, unknown or wrong key)."""
        token = bearer_token(authorization)
        parts = token.split("_", 2) if token else []
        if len(parts) != 3 or parts[0] != PREFIX:
            return None
        record = self.records.get(parts[1])
        if record is None:
            return None
        return record.user if hmac.compare_digest(_digest(record.salt, parts[2]), record.digest) else None


def append_record(path: str | Path, record: KeyRecord) -> None:
    """Add a record to a key file (created with owner-only permissions)."""
    path = Path(path)
    if not path.exists():
        path.touch(mode=0o600)
    with path.open("a") as f:
        f.write(json.dumps(asdict(record)) + "\n")
