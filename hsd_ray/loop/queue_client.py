"""How every part of the loop calls the turn queue actor (loop/queue.py), and how it fetches turn payloads."""

from __future__ import annotations

import ray

from hsd_ray.core.turns import Turn
from hsd_ray.loop import NAMESPACE
from hsd_ray.loop.queue import QUEUE_ACTOR_NAME, Lease, TurnRef


class QueueClient:
    """Typed calls on the queue actor. Blocking calls return values; `*_nowait` calls are fired and not awaited."""

    def __init__(self, handle):
        self.handle = handle

    @classmethod
    def lookup(cls) -> "QueueClient":
        return cls(ray.get_actor(QUEUE_ACTOR_NAME, namespace=NAMESPACE))

    def put(self, turns: list[TurnRef]) -> int:
        return ray.get(self.handle.put.remote(turns))

    def put_nowait(self, turns: list[TurnRef]) -> None:
        self.handle.put.remote(turns)

    def offer(self, turns: list[TurnRef]) -> int:
        return ray.get(self.handle.offer.remote(turns))

    def close(self) -> None:
        ray.get(self.handle.close.remote())

    def lease(self, max_turns: int) -> Lease | None:
        return ray.get(self.handle.lease.remote(max_turns))

    def complete(self, lease: Lease, scored: list[TurnRef], failed: list[str], lost: list[str],
                 not_feedback: list[str] = (), decisions: list[str] = (), errors: dict[str, str] | None = None,
                 receptions: list[tuple[int | None, str]] = (), zero_weight: list[str] = ()) -> bool:
        return ray.get(self.handle.complete.remote(lease.lease_id, scored, failed, lost, list(not_feedback),
                                                   list(decisions), dict(errors or {}), list(receptions),
                                                   list(zero_weight)))

    def release(self, lease: Lease) -> int:
        return ray.get(self.handle.release.remote(lease.lease_id))

    def take_scored(self, n: int, at_least: int = 1, shard: tuple[int, int] | None = None) -> list[TurnRef] | None:
        return ray.get(self.handle.take_scored.remote(n, at_least, shard))

    def ack_trained_nowait(self, turn_ids: list[str]) -> None:
        self.handle.ack_trained.remote(turn_ids)

    def reject_trained(self, n: int) -> int:
        return ray.get(self.handle.reject_trained.remote(n))

    def drop_lost(self, turn_ids: list[str]) -> int:
        return ray.get(self.handle.drop_lost.remote(turn_ids))

    def requeue_training(self, shard: tuple[int, int] | None = None) -> int:
        return ray.get(self.handle.requeue_training.remote(shard))

    def forget_user(self, user_id: str) -> int:
        return ray.get(self.handle.forget_user.remote(user_id))

    def resync_nowait(self) -> None:
        self.handle.resync.remote()

    def dead_letters(self) -> list[dict]:
        return ray.get(self.handle.dead_letters.remote())

    def stats(self) -> dict:
        return ray.get(self.handle.stats.remote())


def fetch_turns(turns: list[TurnRef]) -> tuple[list[Turn], list[TurnRef]]:
    """The payloads of `turns`: (the live ones, in order; the TurnRefs whose payload is lost because the process that
    put it has died). One round trip when nothing is lost."""
    try:
        return ray.get([t.ref for t in turns]), []
    except ray.exceptions.ObjectLostError:  # OwnerDiedError included: find out which ones
        pass
    values, lost = [], []
    for t in turns:
        try:
            values.append(ray.get(t.ref))
        except ray.exceptions.ObjectLostError:
            lost.append(t)
    return values, lost
