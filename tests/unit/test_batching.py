"""GenerationBatcher: concurrent requests share engine calls, replies go back to the right caller, seeded requests
run alone, unequal params never share a call, engine errors reach every request of the failed batch only."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from hsd_ray.core.engine_api import Generation, PolicyVersion, SamplingParams
from hsd_ray.loop.batching import GenerationBatcher

pytestmark = pytest.mark.unit


class Recorder:
    """An engine.generate stand-in that echoes each prompt and records the batches it was called with."""

    def __init__(self, delay: float = 0.05, fail_on: int | None = None):
        self.batches: list[list[int]] = []
        self.delay, self.fail_on = delay, fail_on
        self.threads: set[str] = set()

    def __call__(self, prompts, params):
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay)  # the engine is busy: later requests queue up behind this call
        self.batches.append([p[0] for p in prompts])
        if self.fail_on is not None and self.fail_on in [p[0] for p in prompts]:
            raise RuntimeError("engine exploded")
        return [Generation([p[0]], f"reply to {p[0]} at T={params.temperature}", [0.0], True, 1, PolicyVersion())
                for p in prompts]


def run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_share_calls_and_get_their_own_reply():
    engine = Recorder()
    batcher = GenerationBatcher(engine, max_batch=4, wait_s=0.01)

    async def main():
        return await asyncio.gather(*(batcher.generate([i], SamplingParams()) for i in range(10)))

    gens = run(main())
    assert [g.text for g in gens] == [f"reply to {i} at T=0.7" for i in range(10)]
    assert sorted(x for b in engine.batches for x in b) == list(range(10))
    assert max(len(b) for b in engine.batches) == 4 and len(engine.batches) == 3
    assert batcher.stats() == {"requests": 10, "engine_calls": 3, "largest_batch": 4, "waiting": 0, "engine_busy_s": 0.0}
    assert "MainThread" not in engine.threads  # the engine never blocks the event loop


def test_seeded_requests_run_alone_and_unequal_params_never_mix():
    engine = Recorder()
    batcher = GenerationBatcher(engine, max_batch=8, wait_s=0.01)

    async def main():
        return await asyncio.gather(
            batcher.generate([0], SamplingParams(temperature=0.7)),
            batcher.generate([1], SamplingParams(temperature=0.7, seed=5)),
            batcher.generate([2], SamplingParams(temperature=0.0)),
            batcher.generate([3], SamplingParams(temperature=0.7)),
            batcher.generate([4], SamplingParams(temperature=0.0)),
        )

    gens = run(main())
    assert [g.text for g in gens] == ["reply to 0 at T=0.7", "reply to 1 at T=0.7", "reply to 2 at T=0.0",
                                      "reply to 3 at T=0.7", "reply to 4 at T=0.0"]
    assert engine.batches == [[0, 3], [1], [2, 4]]  # oldest first; the seeded one alone


def test_n_choices_come_from_one_engine_call_and_batches_hold_at_most_max_batch_prompts():
    engine = Recorder()
    batcher = GenerationBatcher(engine, max_batch=4, wait_s=0.01)

    async def main():
        return await asyncio.gather(
            batcher.generate_n([0], SamplingParams(), 3),
            batcher.generate_n([1], SamplingParams(), 1),
            batcher.generate_n([2], SamplingParams(), 2),  # would make 6 prompts: waits for the next call
            batcher.generate_n([3], SamplingParams(seed=9), 2),  # seeded: alone, its choices seeded 9 and 10
            batcher.generate_n([4], SamplingParams(), 6),  # more than max_batch: alone, in one call
        )

    gens = run(main())
    assert [[g.text for g in choices] for choices in gens] == [
        ["reply to 0 at T=0.7"] * 3, ["reply to 1 at T=0.7"], ["reply to 2 at T=0.7"] * 2,
        ["reply to 3 at T=0.7"] * 2, ["reply to 4 at T=0.7"] * 6,
    ]
    assert engine.batches == [[0, 0, 0, 1], [2, 2], [3, 3], [4] * 6]
    assert batcher.stats()["requests"] == 5 and batcher.stats()["largest_batch"] == 6


def test_engine_error_fails_only_its_batch_and_the_batcher_keeps_working():
    engine = Recorder(fail_on=1)
    batcher = GenerationBatcher(engine, max_batch=2, wait_s=0.01)

    async def main():
        results = await asyncio.gather(*(batcher.generate([i], SamplingParams()) for i in range(4)),
                                       return_exceptions=True)
        after = await batcher.generate([9], SamplingParams())
        return results, after

    results, after = run(main())
    assert [type(r).__name__ for r in results] == ["RuntimeError", "RuntimeError", "Generation", "Generation"]
    assert "engine exploded" in str(results[0]) and after.text == "reply to 9 at T=0.7"


def test_cancelled_request_is_dropped_and_others_are_answered():
    engine = Recorder(delay=0.1)
    batcher = GenerationBatcher(engine, max_batch=1, wait_s=0.0)

    async def main():
        first = asyncio.ensure_future(batcher.generate([0], SamplingParams()))
        gone = asyncio.ensure_future(batcher.generate([1], SamplingParams()))
        last = asyncio.ensure_future(batcher.generate([2], SamplingParams()))
        await asyncio.sleep(0.02)
        gone.cancel()  # the client went away while the engine was busy with request 0
        return await first, await last

    first, last = run(main())
    assert (first.text, last.text) == ("reply to 0 at T=0.7", "reply to 2 at T=0.7")
    assert engine.batches == [[0], [2]]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        GenerationBatcher(Recorder(), max_batch=0)


def test_choice_i_is_drawn_with_seed_plus_i_and_unseeded_params_stay_unseeded():
    seeded = SamplingParams(max_tokens=5, temperature=1.0, seed=7)
    assert [seeded.for_index(i).seed for i in range(3)] == [7, 8, 9]
    assert seeded.for_index(2).max_tokens == 5 and seeded.seed == 7  # a copy; the request's params are unchanged
    unseeded = SamplingParams()
    assert unseeded.for_index(4) is unseeded
