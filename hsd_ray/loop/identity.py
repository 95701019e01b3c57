"""Who is chatting, for a chat replica (serve.py): `auth.mode` open or api_keys (config.AuthConfig).

- open: the request's `user` field, else a hash of its bearer key, else "anonymous" (`openai_api.user_identity`).
  Anyone can claim any identity; nothing a user can do is limited to their own data, so the self-service data routes
  are refused.
- api_keys: the bearer key names the user (core/api_keys.py). A missing, malformed or unknown key is refused with
  401 before the body is read; a `user` field naming anyone else is refused with 400 — a client cannot put turns into
  another user's training. The user's own data routes (`/v1/users/me`) work.
"""

from __future__ import annotations

from pathlib import Path

from hsd_ray.core.api_keys import KeyRecord, KeyRing
from hsd_ray.loop import openai_api as oa


class Identity:
    def __init__(self, mode: str, keys_file: str | None, extra_keys: tuple[KeyRecord, ...] = ()):
        """`extra_keys`: records beside the key file's (the job's demo users, loop/users.py), held in memory."""
        self.keys = KeyRing([*KeyRing.load(keys_file).records.values(), *extra_keys]) if mode == "api_keys" else None
        self.mode = mode

    @classmethod
    def resolve_path(cls, keys_file: str | None) -> str | None:
        """The key file as an absolute path (resolved where the job starts, read where the replica runs)."""
        return str(Path(keys_file).expanduser().resolve()) if keys_file else None

    def key_user(self, authorization: str | None) -> str | None:
        """The key's user (api_keys), None in open mode; 401 for a missing or unknown key."""
        if self.keys is None:
            return None
        user = self.keys.user_for(authorization)
        if user is None:
            raise oa.APIError("missing or invalid API key (Authorization: Bearer hsd_...)", status_code=401,
                              type="invalid_request_error", code="invalid_api_key")
        return user

    def user_id(self, key_user: str | None, user_field: str | None, authorization: str | None) -> str:
        """The identity a request's turns are captured under."""
        if key_user is None:
            return oa.user_identity(user_field, authorization)
        if isinstance(user_field, str) and user_field.strip() and user_field.strip() != key_user:
            raise oa.APIError("user: must be your API key's own user (or left out)", param="user",
                              code="user_mismatch")
        return key_user

    def own_user(self, authorization: str | None) -> str:
        """The caller, for their own data routes: only with api_keys (in open mode anyone could name anyone)."""
        if self.keys is None:
            raise oa.APIError("managing your own data needs auth.mode=api_keys (this service trusts the `user` "
                              "field, so it cannot tell who you are); ask the operator (admin API)",
                              code="auth_mode_open")
        return self.key_user(authorization)  # type: ignore[return-value]
