"""Influence limits: how far one user can move the global model.

Every captured turn trains one global policy that every user is served. Without limits a single busy (or hostile)
user supplies most of the batches and the model drifts toward whatever that user asks for. Two rules bound it:

- a per-user quota: at most `max_turns_per_user` of a user's turns enter the queue in any `window_s` seconds (a
  sliding window); the rest are dropped before any teacher work, counted as `user_quota`;
- a diversity floor: a learner step's batch holds turns of at least `min_users_per_step` distinct users. The batch is
  taken oldest first, except that the oldest turn of each of the first `min_users_per_step` distinct users is
  always in it; while fewer distinct users wait, no step is taken (the learner waits for more users).

With per-user adapters (personalization.mode=per_user) a batch is taken `round_robin` instead: every waiting user's
oldest turn before anyone's second, so one busy user cannot starve the others' adapters. In mode `both` every turn
trains its user's adapter and the limits bound only the shared policy: the learner picks a batch's `shared_turns`
under the same two rules, and counts what it leaves out by reason.

Pure: the queue actor (loop/queue.py) holds a `UserWindow` and calls `pick_batch` / `round_robin`.
"""

from __future__ import annotations

from collections import deque
from typing import Sequence


class UserWindow:
    """Turns admitted per user over a sliding window; `max_turns` 0 admits everything."""

    def __init__(self, max_turns: int = 0, window_s: float = 3600.0):
        if max_turns < 0 or window_s <= 0:
            raise ValueError(f"max_turns must be >= 0 and window_s > 0, got {max_turns}, {window_s}")
        self.max_turns, self.window_s = max_turns, window_s
        self._admitted: dict[str, deque[float]] = {}  # per user: the times of the turns admitted inside the window

    def admit(self, user_id: str, now: float) -> bool:
        """True (and counted) if `user_id` has had fewer than `max_turns` turns admitted in (now - window_s, now]."""
        if self.max_turns == 0:
            return True
        if self.used(user_id, now) >= self.max_turns:
            return False
        self._admitted[user_id].append(now)
        return True

    def used(self, user_id: str, now: float) -> int:
        """Turns of `user_id` admitted in (now - window_s, now]."""
        times = self._admitted.setdefault(user_id, deque())
        while times and times[0] <= now - self.window_s:
            times.popleft()
        return len(times)

    def forget(self, user_id: str) -> None:
        """A deleted user leaves no record here either."""
        self._admitted.pop(user_id, None)

    def prune(self, now: float) -> None:
        """Drop users with nothing inside the window (the map would otherwise grow with every user ever seen)."""
        for user in [u for u, t in self._admitted.items() if not t or t[-1] <= now - self.window_s]:
            del self._admitted[user]


def pick_batch(users: Sequence[str], n: int, min_users: int = 1) -> list[int] | None:
    """Which of the waiting turns (their users, oldest first) make a batch of `n`, as sorted indices.

    The oldest turn of each of the first `min_users` distinct users, then the oldest of the rest. None when fewer
    than `n` turns, or turns of fewer than `min_users` distinct users, wait.
    """
    if n < 1 or min_users < 1:
        raise ValueError(f"n and min_users must be >= 1, got {n}, {min_users}")
    if len(users) < n or min_users > n:
        return None
    firsts: dict[str, int] = {}
    for i, user in enumerate(users):
        if user not in firsts:
            firsts[user] = i
            if len(firsts) == min_users:
                break
    if len(firsts) < min_users:
        return None
    chosen = set(firsts.values())
    for i in range(len(users)):
        if len(chosen) == n:
            break
        chosen.add(i)
    return sorted(chosen)


def round_robin(users: Sequence[str], n: int) -> list[int]:
    """Up to `n` of the waiting turns (their users, oldest first) in rounds, as sorted indices: each user's oldest
    turn (users in the order of their oldest turn), then each user's second oldest, and so on."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    seen: dict[str, int] = {}
    ranked = []
    for i, user in enumerate(users):
        ranked.append((seen.get(user, 0), i))
        seen[user] = seen.get(user, 0) + 1
    return sorted(i for _, i in sorted(ranked)[:n])


def shared_turns(users: Sequence[str], window: UserWindow, min_users: int, now: float) -> tuple[list[int], dict]:
    """Which turns of a batch (their users) also train the shared policy (personalization.mode=both), as indices, and
    how many were left out by reason: over the user's quota (`user_quota`), or all of them when they come from fewer
    than `min_users` distinct users (`too_few_users`). Only the turns chosen count against their users' quotas."""
    taken: dict[str, int] = {}
    within = []
    for i, user in enumerate(users):
        if window.max_turns == 0 or window.used(user, now) + taken.get(user, 0) < window.max_turns:
            within.append(i)
            taken[user] = taken.get(user, 0) + 1
    skipped = {"user_quota": len(users) - len(within), "too_few_users": 0}
    if len(taken) < min_users:
        return [], {**skipped, "too_few_users": len(within)}
    for i in within:
        window.admit(users[i], now)
    return within, skipped
