"""The chat service on real local Ray Serve with the tiny model, driven by the official `openai` client.

Covers the OpenAI wire format end to end (non-streaming, SSE streaming, errors), capture through the ReplyLedger actor
(one replica and two), weight following through the version registry, and that a dead ledger never breaks chat.
Only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import openai
import pytest
from openai import OpenAI

from hsd_ray.config import Config
from conftest import free_port  # tests/ is on sys.path (rootdir conftest, no __init__.py)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PORT = free_port()  # Serve's HTTP port is fixed by the first serve.start of the session: one port for the module


def _config(model_dir, **overrides) -> Config:
    base = {
        "model": str(model_dir),
        "serve.port": PORT,
        "serve.cpus_per_replica": 0,
        "engine.kind": "hf",
        "engine.max_model_len": 256,
        "capture.enabled": True,
        "capture.call_timeout_s": 5.0,
        "broadcast.poll_seconds": 0.2,
    }
    base.update(overrides)
    return Config.load(None, [f"{k}={v}" for k, v in base.items()])


def _start_ledger():
    import ray

    from hsd_ray.loop import NAMESPACE
    from hsd_ray.loop.capture import LEDGER_ACTOR_NAME, ReplyLedger

    ledger = ray.remote(ReplyLedger).options(name=LEDGER_ACTOR_NAME, namespace=NAMESPACE).remote(queue=None)
    ray.get(ledger.stats.remote())
    return ledger


def _kill(actor) -> None:
    import ray

    try:
        ray.kill(actor)
    except Exception:
        pass


def _deploy(cfg: Config):
    from hsd_ray.loop.serve import run_service

    url = run_service(cfg)
    assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
    return url, OpenAI(base_url=url, api_key="test", max_retries=0, timeout=60)


def _teardown_app() -> None:
    from ray import serve

    from hsd_ray.loop.serve import APP_NAME

    serve.delete(APP_NAME)


def _stats(ledger) -> dict:
    import ray

    return ray.get(ledger.stats.remote())


def _delta(after: dict, before: dict) -> dict:
    return {k: after[k] - before.get(k, 0) for k in after}


def _health(url: str) -> dict:
    r = httpx.get(url.removesuffix("/v1") + "/health", timeout=30)
    assert r.status_code == 200
    return r.json()


HELLO = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="class")
def chat(ray_session, tiny_model_dir):
    """One replica with capture into a fresh ledger; torn down after the class."""
    ledger = _start_ledger()
    url, client = _deploy(_config(tiny_model_dir))
    yield SimpleNamespace(url=url, client=client, ledger=ledger)
    _teardown_app()
    _kill(ledger)


class TestOneReplica:
    def test_reply(self, chat):
        r = chat.client.chat.completions.create(model="hsd-policy", messages=HELLO, max_tokens=8, temperature=0)
        assert r.id.startswith("chatcmpl-") and r.object == "chat.completion"
        assert isinstance(r.choices[0].message.content, str) and r.choices[0].message.role == "assistant"
        assert r.choices[0].finish_reason in ("stop", "length")
        assert r.system_fingerprint == "hsd-base-v0" and r.model == "hsd-policy"
        assert r.usage.completion_tokens <= 8 and r.usage.prompt_tokens > 0

    @pytest.mark.parametrize("temperature, seed", [(0.0, 7), (1.0, 3)])
    def test_stream_equals_non_streaming(self, chat, temperature, seed):
        kw = dict(model="hsd-policy", messages=HELLO, max_tokens=24, temperature=temperature, top_p=1, seed=seed)
        full = chat.client.chat.completions.create(**kw)
        chunks = list(chat.client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
        assert chunks[0].choices[0].delta.role == "assistant"
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == full.choices[0].message.content
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert finishes == [full.choices[0].finish_reason]
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == full.usage.completion_tokens
        assert {c.id for c in chunks} == {chunks[0].id} and all(c.system_fingerprint == "hsd-base-v0" for c in chunks)

    @pytest.mark.parametrize("temperature", [0.0, 1.0])
    def test_logprobs_with_top_alternatives_streamed_or_not(self, chat, temperature):
        """One entry per generated token (usage counts them), its bytes exact (joined: the reply), its top alternatives
        best first; streamed, the chunks carry the same entries, each with the piece its tokens complete."""
        kw = dict(model="m", messages=[{"role": "user", "content": "Emojis please 🐱🎉"}], max_tokens=24,
                  temperature=temperature, top_p=1, seed=5, logprobs=True, top_logprobs=3)
        full = chat.client.chat.completions.create(**kw)
        entries = full.choices[0].logprobs.content
        assert len(entries) == full.usage.completion_tokens
        joined = b"".join(bytes(e.bytes) for e in entries)
        assert joined.decode("utf-8", errors="replace") == full.choices[0].message.content
        for e in entries:
            alternatives = [a.logprob for a in e.top_logprobs]
            assert len(alternatives) == 3 and alternatives == sorted(alternatives, reverse=True)
            assert e.logprob <= alternatives[0] + 1e-4 and (e.token in [a.token for a in e.top_logprobs]
                                                            or e.logprob <= alternatives[-1] + 1e-4)
        if temperature == 0:
            assert all(e.token == e.top_logprobs[0].token for e in entries)
        chunks = list(chat.client.chat.completions.create(stream=True, **kw))
        streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
        assert [(e.token, e.bytes) for e in streamed] == [(e.token, e.bytes) for e in entries]
        assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in entries], abs=1e-4)
        plain = chat.client.chat.completions.create(**{**kw, "logprobs": False, "top_logprobs": None})
        assert plain.choices[0].logprobs is None and plain.choices[0].message.content == full.choices[0].message.content

    def test_presence_and_frequency_penalties_change_a_repetitive_reply(self, chat):
        kw = dict(model="m", messages=HELLO, max_tokens=32, temperature=0)
        plain = chat.client.chat.completions.create(**kw).choices[0].message.content
        penalized = [chat.client.chat.completions.create(**kw, frequency_penalty=2.0, presence_penalty=1.0)
                     .choices[0].message.content for _ in range(2)]
        assert penalized[0] == penalized[1] != plain  # the tiny model repeats itself; greedy stays reproducible

    def test_sse_framing(self, chat):
        body = {"model": "m", "messages": HELLO, "max_tokens": 4, "stream": True}
        with httpx.stream("POST", f"{chat.url}/chat/completions", json=body, timeout=60) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            events = [line for line in r.iter_lines() if line]
        assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
        assert all(json.loads(e[6:])["object"] == "chat.completion.chunk" for e in events[:-1])

    def test_models_and_health(self, chat):
        assert [m.id for m in chat.client.models.list().data] == ["hsd-policy"]
        health = _health(chat.url)
        assert health["status"] == "ok" and health["policy_version"] == 0 and health["fingerprint"] == "hsd-base-v0"
        assert health["replica"] and health["capture"]["enabled"]

    def test_concurrent_requests_are_batched_and_seeded_replies_do_not_depend_on_traffic(self, chat):
        from concurrent.futures import ThreadPoolExecutor

        seeded = dict(model="m", messages=HELLO, max_tokens=8, temperature=1.0, seed=42)
        alone = chat.client.chat.completions.create(**seeded).choices[0].message.content
        before = _health(chat.url)["batching"]

        def ask(i):
            if i == 3:
                return chat.client.chat.completions.create(**seeded).choices[0].message.content
            msgs = [{"role": "user", "content": f"Count to {i}."}]
            return chat.client.chat.completions.create(model="m", messages=msgs, max_tokens=8).choices[0].message.content

        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(ask, range(8)))
        after = _health(chat.url)["batching"]
        assert replies[3] == alone  # a seeded request runs alone: the same reply whatever else is in flight
        assert after["requests"] - before["requests"] == 8
        assert after["engine_calls"] - before["engine_calls"] < 8 and after["largest_batch"] > 1

    @pytest.mark.parametrize(
        "kwargs, param",
        [
            (dict(n=9), "n"),  # serve.max_n is 8
            (dict(max_tokens=10_000), "max_tokens"),
            (dict(messages=HELLO + [{"role": "assistant", "content": "Paris"}]), "messages"),
            (dict(messages=[{"role": "robot", "content": "beep"}]), "messages"),
            (dict(messages=[]), "messages"),
            (dict(extra_body={"stop": 3}), "stop"),
            (dict(extra_body={"top_k": 5}), "top_k"),  # vLLM's extra, not OpenAI's: refused, not silently ignored
            (dict(extra_body={"reasoning_effort": "high"}), "reasoning_effort"),
            (dict(messages=[{"role": "user", "content": None}]), "messages"),
            (dict(messages=[{"role": "user", "content": "hello there " * 200}]), "messages"),  # > max_model_len
        ],
    )
    def test_bad_requests(self, chat, kwargs, param):
        kw = dict(model="hsd-policy", messages=HELLO, max_tokens=4) | kwargs
        with pytest.raises(openai.BadRequestError) as info:
            chat.client.chat.completions.create(**kw)
        err = info.value
        assert err.status_code == 400 and err.body["param"] == param
        assert err.body["type"] == "invalid_request_error" and set(err.body) == {"message", "type", "param", "code"}

    def test_never_422(self, chat):
        for body in (b"{not json", b'{"model": "m"}', b'{"messages": "x"}', b"[]"):
            r = httpx.post(f"{chat.url}/chat/completions", content=body, timeout=30,
                           headers={"content-type": "application/json"})
            assert r.status_code == 400, (body, r.text)
            assert r.json()["error"]["type"] == "invalid_request_error"
        r = httpx.post(f"{chat.url}/chat/completions", json={"messages": "x" * 10_000}, timeout=30)
        assert r.status_code == 400

    def test_too_long_prompt_code(self, chat):
        with pytest.raises(openai.BadRequestError) as info:
            chat.client.chat.completions.create(model="m", messages=[{"role": "user", "content": "word " * 400}])
        assert info.value.body["code"] == "context_length_exceeded"

    def test_followup_is_captured_and_edited_reply_is_not(self, chat):
        before = _stats(chat.ledger)
        first = chat.client.chat.completions.create(model="m", messages=HELLO, max_tokens=6, temperature=0.0)
        reply = first.choices[0].message.content
        recorded = _delta(_stats(chat.ledger), before)
        assert recorded["recorded"] == 1 and recorded["outstanding"] == 1  # recorded before the response came back

        follow = HELLO + [{"role": "assistant", "content": reply}, {"role": "user", "content": "No, shorter."}]
        chat.client.chat.completions.create(model="m", messages=follow, max_tokens=4)
        d = _delta(_stats(chat.ledger), before)
        assert d["captured"] == 1 and d["unmatched"] == 0

        edited = HELLO + [{"role": "assistant", "content": reply + " (edited)"}, {"role": "user", "content": "ok"}]
        chat.client.chat.completions.create(model="m", messages=edited, max_tokens=4)
        d = _delta(_stats(chat.ledger), before)
        assert d["captured"] == 1 and d["unmatched"] == 1

        # another user (a different API key) continuing the same transcript is not this reply's follow-up
        other = OpenAI(base_url=chat.url, api_key="someone-else", max_retries=0)
        again = chat.client.chat.completions.create(model="m", messages=HELLO, max_tokens=6, temperature=0.0)
        assert again.choices[0].message.content == reply
        other.chat.completions.create(model="m", messages=follow, max_tokens=4)
        d = _delta(_stats(chat.ledger), before)
        assert d["captured"] == 1 and d["unmatched"] == 2

    def test_n_choices_are_the_seeded_replies_streamed_or_not_and_each_can_be_continued(self, chat):
        kw = dict(model="m", messages=HELLO, max_tokens=8, temperature=1.0, top_p=1)
        before = _stats(chat.ledger)
        r = chat.client.chat.completions.create(n=3, seed=5, user="chooser", **kw)
        assert [c.index for c in r.choices] == [0, 1, 2] and r.system_fingerprint == "hsd-base-v0"
        singles = [chat.client.chat.completions.create(seed=5 + i, user="single", **kw) for i in range(3)]
        assert [c.message.content for c in r.choices] == [s.choices[0].message.content for s in singles]
        assert r.usage.completion_tokens == sum(s.usage.completion_tokens for s in singles)
        chunks = list(chat.client.chat.completions.create(n=3, seed=5, user="streamer-n", stream=True,
                                                          stream_options={"include_usage": True}, **kw))
        texts, finishes = ["", "", ""], [None, None, None]
        for chunk in chunks:
            for c in chunk.choices:
                texts[c.index] += c.delta.content or ""
                finishes[c.index] = c.finish_reason or finishes[c.index]
        assert texts == [c.message.content for c in r.choices]
        assert finishes == [c.finish_reason for c in r.choices]
        assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens
        assert _delta(_stats(chat.ledger), before)["recorded"] == 9  # every choice is recorded
        follow = HELLO + [{"role": "assistant", "content": r.choices[1].message.content},
                          {"role": "user", "content": "Shorter, please."}]
        chat.client.chat.completions.create(model="m", messages=follow, max_tokens=4, user="chooser")
        d = _delta(_stats(chat.ledger), before)
        assert d["captured"] == 1 and d["unmatched"] == 0  # the choice the user continued with

    def test_streamed_reply_is_captured(self, chat):
        before = _stats(chat.ledger)
        kw = dict(model="m", max_tokens=6, temperature=1.0, seed=11, user="streamer")
        chunks = list(chat.client.chat.completions.create(messages=HELLO, stream=True, **kw))
        reply = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        follow = HELLO + [{"role": "assistant", "content": reply}, {"role": "user", "content": "thanks"}]
        chat.client.chat.completions.create(messages=follow, **kw)
        d = _delta(_stats(chat.ledger), before)
        assert d["recorded"] == 2 and d["captured"] == 1

    def test_follows_published_weights(self, chat, tiny_model_dir):
        import ray
        from transformers import AutoModelForCausalLM

        from hsd_ray.core.policy import export_weights
        from hsd_ray.loop import NAMESPACE
        from hsd_ray.loop.broadcast import REGISTRY_ACTOR_NAME, VersionRegistry, publish

        registry = ray.remote(VersionRegistry).options(name=REGISTRY_ACTOR_NAME, namespace=NAMESPACE).remote()
        try:
            model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
            weights = export_weights(model, version=1, step=1)
            publish(registry, weights)  # what the learner's BackgroundPublisher does
            assert ray.get(registry.latest_version.remote()) == 1
            deadline = time.time() + 30
            while _health(chat.url)["policy_version"] != 1:
                assert time.time() < deadline, "replica did not pick up version 1"
                time.sleep(0.3)
            r = chat.client.chat.completions.create(model="m", messages=HELLO, max_tokens=4)
            assert r.system_fingerprint == "hsd-base-v1"
            assert _health(chat.url)["following_registry"]
        finally:
            _kill(registry)

    def test_dead_ledger_does_not_break_chat(self, chat):
        import ray

        errors_before = _health(chat.url)["capture"]["errors"]
        ray.kill(chat.ledger)
        reply = chat.client.chat.completions.create(model="m", messages=HELLO, max_tokens=4).choices[0].message.content
        follow = HELLO + [{"role": "assistant", "content": reply}, {"role": "user", "content": "and?"}]
        for _ in range(2):
            r = chat.client.chat.completions.with_raw_response.create(model="m", messages=follow, max_tokens=4)
            assert r.status_code == 200 and r.parse().choices[0].message.content is not None
        chunks = list(chat.client.chat.completions.create(model="m", messages=follow, max_tokens=4, stream=True))
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")
        assert _health(chat.url)["capture"]["errors"] > errors_before


def test_two_replicas_capture_across_replicas(ray_session, tiny_model_dir):
    """A follow-up is matched whichever replica serves it (the ledger is shared, recording precedes the response)."""
    ledger = _start_ledger()
    try:
        url, client = _deploy(_config(tiny_model_dir, **{"serve.replicas": 2}))
        before = _stats(ledger)
        served_by, crossed, n = set(), 0, 0
        while n < 16 and not (n >= 4 and crossed >= 1 and len(served_by) == 2):
            user = f"user-{n}"
            messages = [{"role": "user", "content": f"Tell me about {n} green apples."}]
            first = client.chat.completions.with_raw_response.create(model="m", messages=messages, max_tokens=5,
                                                                     user=user)
            reply = first.parse().choices[0].message.content
            messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": "Why?"}]
            second = client.chat.completions.with_raw_response.create(model="m", messages=messages, max_tokens=5,
                                                                      user=user)
            a, b = first.headers["x-hsd-replica"], second.headers["x-hsd-replica"]
            served_by |= {a, b}
            crossed += a != b
            n += 1
        d = _delta(_stats(ledger), before)
        assert len(served_by) == 2, "both replicas should have served requests"
        assert crossed >= 1, "no follow-up went to the other replica"
        assert d["recorded"] == 2 * n and d["captured"] == n and d["unmatched"] == 0
    finally:
        _teardown_app()
        _kill(ledger)


def test_prepare_rejects_long_prompts_and_fits_max_tokens():
    """ChatService._prepare without Ray: too long a prompt → 400 context_length_exceeded; max_tokens fits the context.
    (Engine errors → 500 go through GenerationBatcher: tests/unit/test_batching.py.)"""
    from hsd_ray.loop import openai_api as oa
    from hsd_ray.loop.serve import ChatService

    class Tok:
        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"

        def __call__(self, text, add_special_tokens, split_special_tokens):
            return {"input_ids": [ord(c) for c in text]}

    cfg = Config.load(None, ["engine.max_model_len=64"])
    fake = SimpleNamespace(settings=SimpleNamespace(engine=cfg.engine), engine=SimpleNamespace(tokenizer=Tok()),
                           replica_id="r")
    prepare = ChatService.func_or_class._prepare
    call = oa.parse_chat_request({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 500}, cfg.serve)
    prompt, params = prepare(fake, call, "base")
    assert len(prompt) == len("<user>hi<assistant>") and params.max_tokens == 64 - len(prompt)
    assert params.adapter_id == "base"
    long_call = oa.parse_chat_request({"messages": [{"role": "user", "content": "y" * 100}]}, cfg.serve)
    with pytest.raises(oa.APIError) as info:
        prepare(fake, long_call, "base")
    assert info.value.status_code == 400 and info.value.code == "context_length_exceeded"


def test_serve_app_entry_point_builds_the_app(tiny_model_dir):
    """`serve run serve_app:app` imports serve_app: config from env, one Application bound to it."""
    code = (
        "import serve_app; from ray.serve import Application; "
        "assert isinstance(serve_app.app, Application); print('ok')"
    )
    env = dict(os.environ, HSD_RAY_OVERRIDES=f"model={tiny_model_dir} serve.replicas=2", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
