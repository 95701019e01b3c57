"""A request's choices streamed live from an engine that batches continuously (vLLM's async engine): each of the n
choices is its own engine stream (a seeded choice i is drawn with seed + i, as everywhere), and their deltas are
merged into one stream in the order the engine produces them, each tagged with its choice index.

The first item of every choice is awaited before anything is sent, so a failure before the first token is still the
request's HTTP status, and the versions of all choices are known for the fingerprint: the engine drains before a
weight swap, so a choice has one version from its first delta to its end; were choices admitted on both sides of a
swap, the fingerprint names every version.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator

from hsd_ray.core.engine_api import Generation, SamplingParams

_END = object()  # a choice's pump is done (its Generation was the item before)


class LiveChoices:
    """The n engine streams of one request, opened and their first items awaited (`open`), then `merged`."""

    def __init__(self, streams: list, firsts: list):
        self.streams, self.firsts = streams, firsts

    @classmethod
    async def open(cls, engine, prompt: list[int], params: SamplingParams, n: int,
                   held: contextlib.AsyncExitStack) -> "LiveChoices":
        """Start the n streams (closed by `held`, which aborts whatever is still running in the engine) and await
        each one's first item."""
        streams = [engine.stream(prompt, params.for_index(i)) for i in range(n)]
        for stream in streams:
            held.push_async_callback(stream.aclose)
        firsts = await asyncio.gather(*(anext(stream) for stream in streams))
        return cls(streams, list(firsts))

    def fingerprint(self) -> str:
        return "+".join(dict.fromkeys(item.version.fingerprint() for item in self.firsts))

    async def merged(self, deadline: float) -> AsyncIterator[tuple[int, object]]:
        """(choice index, item) as the engine produces them, every choice's first item first; a choice's last item is
        its Generation. An engine error, or the deadline (the loop's clock), raises here."""
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(i: int) -> None:
            item = self.firsts[i]
            try:
                await queue.put((i, item))
                while not isinstance(item, Generation):
                    item = await anext(self.streams[i])
                    await queue.put((i, item))
                await queue.put((i, _END))
            except Exception as e:  # noqa: BLE001 - handed to the consumer, which raises it
                await queue.put((i, e))

        tasks = [asyncio.create_task(pump(i)) for i in range(len(self.streams))]
        running = len(tasks)
        try:
            while running:
                async with asyncio.timeout_at(deadline):
                    i, item = await queue.get()
                if item is _END:
                    running -= 1
                elif isinstance(item, Exception):
                    raise item
                else:
                    yield i, item
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
