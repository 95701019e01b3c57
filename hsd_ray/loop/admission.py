"""Admission control of a chat replica: how many chat requests it works on, how many may wait, for how long, and how
fast one user may send. Pure asyncio (no Ray, no HTTP); the chat service (serve.py) turns the refusals into OpenAI
error responses with `Retry-After`:

- `AdmissionGate`: at most `max_ongoing` requests hold a slot (in the batcher or generating); up to `max_queued`
  more wait for one, first come first served; beyond that a request is refused at once (`Overloaded`, HTTP 503), so
  overload costs a client one round trip instead of an unbounded wait. The request timeout (serve.py) bounds the
  wait together with the generation.
- `UserRateLimit`: one token bucket per user (`rate_per_s` tokens a second, up to `burst`); a request finding the
  bucket empty is refused (`RateLimited`, HTTP 429) with the seconds until its next token. Buckets are per replica
  (N replicas allow up to N times the rate) and the least recently seen user is forgotten beyond `max_users`.

Both are plain counters on one event loop: a replica's requests all run on its asyncio loop, so no locks are needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import OrderedDict, deque
from typing import AsyncIterator


class Overloaded(Exception):
    """Every slot is taken and the wait queue is full."""

    def __init__(self, ongoing: int, queued: int):
        super().__init__(f"the server is overloaded ({ongoing} requests in progress, {queued} waiting); retry later")
        self.ongoing, self.queued = ongoing, queued


class RateLimited(Exception):
    """A user's token bucket is empty; `retry_after_s` until the next token."""

    def __init__(self, retry_after_s: float, rate_per_s: float):
        super().__init__(f"rate limit reached for this user ({rate_per_s:g} requests/s); retry after "
                         f"{math.ceil(retry_after_s)} s")
        self.retry_after_s = retry_after_s


class AdmissionGate:
    def __init__(self, max_ongoing: int, max_queued: int):
        if max_ongoing < 1 or max_queued < 0:
            raise ValueError("max_ongoing >= 1 and max_queued >= 0")
        self.max_ongoing, self.max_queued = max_ongoing, max_queued
        self.ongoing = 0
        self._waiters: deque[asyncio.Future] = deque()
        self.refused = 0

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold a slot for the body; raises Overloaded at once when the wait queue is full. A waiter that is
        cancelled (request timeout, client gone) leaves the queue and never takes a slot."""
        if self.ongoing >= self.max_ongoing or self._waiters:
            if len(self._waiters) >= self.max_queued:
                self.refused += 1
                raise Overloaded(self.ongoing, len(self._waiters))
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter  # set by a release, which hands its slot over (ongoing unchanged)
            except BaseException:
                if waiter.done() and not waiter.cancelled():  # handed a slot just as it was cancelled: pass it on
                    self._release()
                elif waiter in self._waiters:  # (a release may already have skipped it as cancelled)
                    self._waiters.remove(waiter)
                raise
        else:
            self.ongoing += 1
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes to the oldest waiter
                return
        self.ongoing -= 1

    def stats(self) -> dict:
        return {"ongoing": self.ongoing, "queued": len(self._waiters), "refused": self.refused,
                "max_ongoing": self.max_ongoing, "max_queued": self.max_queued}


class UserRateLimit:
    def __init__(self, rate_per_s: float, burst: float, max_users: int = 100_000, clock=time.monotonic):
        self.rate_per_s, self.burst, self.max_users, self.clock = rate_per_s, max(1.0, burst), max_users, clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # user → (tokens, at)
        self.refused = 0

    @property
    def enabled(self) -> bool:
        return self.rate_per_s > 0

    @property
    def users(self) -> int:
        """Users with a bucket now (at most max_users)."""
        return len(self._buckets)

    def take(self, user_id: str) -> None:
        """Spend one of the user's tokens, or raise RateLimited (nothing spent)."""
        if not self.enabled:
            return
        now = self.clock()
        tokens, at = self._buckets.pop(user_id, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate_per_s)
        if tokens < 1:
            self._buckets[user_id] = (tokens, now)
            self.refused += 1
            raise RateLimited((1 - tokens) / self.rate_per_s, self.rate_per_s)
        self._buckets[user_id] = (tokens - 1, now)
        while len(self._buckets) > self.max_users:
            self._buckets.popitem(last=False)  # least recently seen: it would have refilled the longest
