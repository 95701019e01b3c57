"""Cross-request batching for a chat replica: concurrent requests with the same sampling settings share one
`engine.generate` call. vLLM generates a batch for little more than the cost of one reply (bench_engines: 17.9×
throughput at batch 12 on CPU); the transformers engine loops inside the call, so batching only queues there.

Pure asyncio, no Ray: the engine call runs on a worker thread, one call at a time per replica. While a batch
generates, new requests wait and form the next batch (so under load batches fill by themselves); an idle replica
waits `wait_s` after the first request for others to join.

A request with a seed is never merged: prompt i of a batch is drawn with seed + i (engines/base.py), so its reply
would depend on where it landed in the batch. Requests are merged only with identical SamplingParams (one params per
engine call); the others wait for a later batch, in arrival order. A request for `n` choices (`generate_n`) puts its
prompt n times into one engine call, so its choices come from one policy version, and a seeded one draws choice i with
seed + i.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import astuple

from hsd_ray.core.engine_api import Generation, SamplingParams

GenerateFn = Callable[[list[list[int]], SamplingParams], list[Generation]]


class GenerationBatcher:
    def __init__(self, generate: GenerateFn, max_batch: int = 8, wait_s: float = 0.005):
        if max_batch < 1 or wait_s < 0:
            raise ValueError("max_batch >= 1 and wait_s >= 0")
        self._generate = generate
        self.max_batch, self.wait_s = max_batch, wait_s
        self._pending: list[tuple[list[list[int]], SamplingParams, asyncio.Future]] = []  # (prompts, params, future)
        self._worker: asyncio.Task | None = None
        self.requests = 0  # requests generated (stats for /health and the tests)
        self.calls = 0  # engine.generate calls made
        self.largest = 0  # largest batch so far
        self.busy_since: float | None = None  # time.monotonic() when the running engine call began (health check)

    async def generate(self, prompt: list[int], params: SamplingParams) -> Generation:
        """The reply to one prompt; raises what the engine raised for its batch."""
        return (await self.generate_n(prompt, params, 1))[0]

    async def generate_n(self, prompt: list[int], params: SamplingParams, n: int) -> list[Generation]:
        """`n` replies to one prompt, from one engine call."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append(([prompt] * n, params, future))
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._drain())
        return await future

    def stats(self) -> dict:
        return {"requests": self.requests, "engine_calls": self.calls, "largest_batch": self.largest,
                "waiting": len(self._pending), "engine_busy_s": self.busy_s()}

    def busy_s(self) -> float:
        """How long the running engine call has run (0 when idle)."""
        since = self.busy_since
        return 0.0 if since is None else time.monotonic() - since

    async def _drain(self) -> None:
        first = True
        while self._pending:
            if first and self.wait_s > 0 and len(self._pending) < self.max_batch:
                await asyncio.sleep(self.wait_s)  # an idle replica: let concurrent requests join
            first = False
            batch = self._take_batch()
            if not batch:
                continue
            prompts, params = [p for item, _, _ in batch for p in item], batch[0][1]
            self.busy_since = time.monotonic()
            try:
                gens = await asyncio.to_thread(self._generate, prompts, params)
                if len(gens) != len(prompts):
                    raise RuntimeError(f"engine returned {len(gens)} generations for {len(prompts)} prompts")
            except Exception as e:  # noqa: BLE001 - every request of the batch gets the engine's error
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            finally:
                self.busy_since = None
            self.calls += 1
            self.requests += len(batch)
            self.largest = max(self.largest, len(prompts))
            at = 0
            for item, _, future in batch:
                if not future.done():  # the client may have gone away (cancelled)
                    future.set_result(gens[at : at + len(item)])
                at += len(item)

    def _take_batch(self) -> list:
        """The oldest waiting request and, unless it is seeded, later ones with equal params while the batch holds at
        most max_batch prompts (a request for more choices than that runs alone)."""
        self._pending = [item for item in self._pending if not item[2].done()]  # drop cancelled requests
        if not self._pending:
            return []
        head = self._pending[0]
        key = _key(head[1])
        batch, rest, size = [head], [], len(head[0])
        for item in self._pending[1:]:
            if key is not None and size + len(item[0]) <= self.max_batch and _key(item[1]) == key:
                batch.append(item)
                size += len(item[0])
            else:
                rest.append(item)
        self._pending = rest
        return batch


def _key(params: SamplingParams):
    """Requests with equal keys may share an engine call; a seeded request has none (it always runs alone)."""
    if params.seed is not None:
        return None
    return tuple(tuple(x) if isinstance(x, list) else x for x in astuple(params))
