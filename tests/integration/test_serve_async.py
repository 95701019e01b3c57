"""The chat service on vLLM's async engine (engine.kind=vllm, engines/vllm_async.py), on real local Ray Serve with the
tiny model, driven by the official `openai` client over 127.0.0.1.

Every test of test_serve.TestOneReplica runs again on this engine (wire format, streaming == non-streaming, errors,
capture of streamed and non-streamed replies, weight following, a dead ledger); the tests below add what only a
continuous-batching, token-streaming engine has: the first chunk leaves long before the reply ends (for each of n
streamed choices too, merged as they are sampled), a seeded reply
does not depend on the traffic around it, a client that goes away aborts its request in the engine, and a weight swap
never mixes versions inside a reply (each reply equals the reference reply of the version its fingerprint names).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import httpx
import pytest

import test_serve as base  # tests/integration is on sys.path (rootdir conftest, no __init__.py)

pytestmark = pytest.mark.integration

HELLO = base.HELLO


@pytest.fixture(scope="class")
def chat(ray_session, tiny_model_dir):
    """One replica on the async vLLM engine with capture into a fresh ledger; torn down after the class."""
    ledger = base._start_ledger()
    url, client = base._deploy(base._config(tiny_model_dir, **{"engine.kind": "vllm"}))
    assert base._health(url)["batching"]["in_flight"] == 0  # the async engine's stats, not the batcher's
    yield SimpleNamespace(url=url, client=client, ledger=ledger)
    base._teardown_app()
    base._kill(ledger)


def _timed_stream(client, **kw):
    """(arrival time of each content chunk, text, fingerprint of the chunks, usage) of one streamed reply."""
    t0 = time.perf_counter()
    times, pieces, prints, usage = [], [], set(), None
    for c in client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw):
        prints.add(c.system_fingerprint)
        if c.usage is not None:
            usage = c.usage
        if c.choices and c.choices[0].delta.content:
            times.append(time.perf_counter() - t0)
            pieces.append(c.choices[0].delta.content)
    assert len(prints) == 1, prints
    return times, "".join(pieces), prints.pop(), usage


class TestAsyncEngine(base.TestOneReplica):
    def test_concurrent_requests_are_batched_and_seeded_replies_do_not_depend_on_traffic(self, chat):
        seeded = dict(model="m", messages=HELLO, max_tokens=24, temperature=1.0, seed=42)
        alone = chat.client.chat.completions.create(**seeded).choices[0].message.content

        def ask(i):
            if i == 3:
                return _timed_stream(chat.client, **seeded)[1]
            msgs = [{"role": "user", "content": f"Count to {i}."}]
            return _timed_stream(chat.client, model="m", messages=msgs, max_tokens=64, temperature=1.0)[1]

        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(ask, range(8)))
        assert replies[3] == alone  # the same reply whatever else the engine was generating beside it
        stats = base._health(chat.url)["batching"]
        assert stats["in_flight"] == 0 and stats["engine_unfinished"] == 0

    def test_first_chunk_leaves_when_the_first_token_is_sampled(self, chat):
        times, text, _, usage = _timed_stream(chat.client, model="m", messages=HELLO, max_tokens=200, temperature=1.0,
                                              top_p=1, seed=5)
        assert usage.completion_tokens >= 32, "the reply ended too early to tell streaming from a whole reply"
        assert len(times) >= 16
        assert times[0] < 0.5 * times[-1], times  # a whole-reply server sends every chunk at the end

    def test_n_streamed_choices_are_sent_live_and_merged(self, chat):
        kw = dict(model="m", messages=HELLO, max_tokens=160, temperature=1.0, top_p=1, seed=11)
        t0, arrivals = time.perf_counter(), {0: [], 1: []}
        for chunk in chat.client.chat.completions.create(n=2, stream=True, **kw):
            for c in chunk.choices:
                if c.delta.content:
                    arrivals[c.index].append(time.perf_counter() - t0)
        assert min(len(a) for a in arrivals.values()) >= 16, "a reply ended too early to tell live from whole"
        end = max(a[-1] for a in arrivals.values())
        assert max(a[0] for a in arrivals.values()) < 0.5 * end, arrivals  # each choice's first token, early
        # merged as sampled: neither choice waits for the other to finish (sent one after the other, it would)
        assert arrivals[1][0] < arrivals[0][-1] and arrivals[0][0] < arrivals[1][-1], arrivals

    def test_client_disconnect_aborts_the_request_in_the_engine(self, chat):
        before = base._health(chat.url)["batching"]["aborted"]
        body = {"model": "m", "messages": HELLO, "max_tokens": 220, "temperature": 1.0, "stream": True}
        with httpx.stream("POST", f"{chat.url}/chat/completions", json=body, timeout=60) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")  # the role chunk; then we hang up mid-reply
        deadline = time.time() + 30
        while True:
            stats = base._health(chat.url)["batching"]
            if stats["aborted"] == before + 1 and stats["in_flight"] == 0 and stats["engine_unfinished"] == 0:
                break
            assert time.time() < deadline, stats
            time.sleep(0.2)


def test_weight_swap_never_mixes_versions(ray_session, tiny_model_dir):
    """Seeded replies stream while a new version is published: every reply is exactly the reference reply of the
    version its fingerprint names (a reply spanning the swap would match neither)."""
    import ray
    import torch
    from transformers import AutoModelForCausalLM

    from hsd_ray.core.policy import export_weights
    from hsd_ray.loop import NAMESPACE
    from hsd_ray.loop.broadcast import REGISTRY_ACTOR_NAME, VersionRegistry, publish

    url, client = base._deploy(base._config(tiny_model_dir, **{"engine.kind": "vllm", "capture.enabled": False}))
    registry = ray.remote(VersionRegistry).options(name=REGISTRY_ACTOR_NAME, namespace=NAMESPACE).remote()
    try:
        kw = dict(model="m", messages=HELLO, max_tokens=120, temperature=1.0, top_p=1, seed=9)
        reference = {"hsd-base-v0": _timed_stream(client, **kw)[1]}
        model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))

        def ask(i):
            time.sleep(0.15 * i)
            return _timed_stream(client, **kw)

        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(ask, i) for i in range(6)]
            time.sleep(0.3)
            publish(registry, export_weights(model, version=1, step=1))
            replies = [f.result() for f in futures]
        deadline = time.time() + 60
        while base._health(url)["policy_version"] != 1:
            assert time.time() < deadline, "replica did not pick up version 1"
            time.sleep(0.3)
        _, text, fingerprint, _ = _timed_stream(client, **kw)
        assert fingerprint == "hsd-base-v1"
        reference[fingerprint] = text
        assert reference["hsd-base-v0"] != reference["hsd-base-v1"]  # the versions are told apart by their replies
        for _, text, fingerprint, _ in replies:
            assert text == reference[fingerprint], fingerprint
        swap = base._health(url)["batching"]["last_swap"]
        assert swap["version"] == 1 and swap["drain_s"] >= 0 and swap["load_s"] > 0
    finally:
        base._kill(registry)
        base._teardown_app()
