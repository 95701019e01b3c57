"""Fuzz: hostile and malformed requests against a real Serve app over HTTP (127.0.0.1), tiny model.

The bar (issue 12): every one is refused with a 4xx and an OpenAI-style error body, never a 5xx; the server answers
normally afterwards; nothing is captured from a rejected request, even one that continues a real reply; a
100,000-message body is refused in milliseconds.
"""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import httpx
import pytest

from hsd_ray.config import Config
from conftest import free_port

pytestmark = pytest.mark.integration

HI = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def app(ray_session, tiny_model_dir):
    import ray
    from ray import serve

    from hsd_ray.loop import NAMESPACE
    from hsd_ray.loop.capture import LEDGER_ACTOR_NAME, ReplyLedger
    from hsd_ray.loop.serve import APP_NAME, run_service

    ledger = ray.remote(ReplyLedger).options(name=LEDGER_ACTOR_NAME, namespace=NAMESPACE).remote(queue=None)
    ray.get(ledger.stats.remote())
    overrides = {"model": str(tiny_model_dir), "serve.port": free_port(), "serve.cpus_per_replica": 0,
                 "engine.kind": "hf", "engine.max_model_len": 256, "capture.call_timeout_s": 5.0}
    url = run_service(Config.load(None, [f"{k}={v}" for k, v in overrides.items()]))
    client = httpx.Client(base_url=url.removesuffix("/v1"), timeout=60)
    yield SimpleNamespace(http=client, ledger=lambda: ray.get(ledger.stats.remote()))
    client.close()
    serve.delete(APP_NAME)
    ray.kill(ledger)


def _chat(app, body=None, raw: bytes | None = None, headers=None) -> httpx.Response:
    content = raw if raw is not None else json.dumps(body).encode()
    return app.http.post("/v1/chat/completions", content=content,
                         headers={"content-type": "application/json", **(headers or {})})


def _hostile_bodies(follow: list[dict]) -> list[tuple[str, dict]]:
    """JSON bodies that must be refused; most continue a real reply (`follow`), so a capture would be visible."""
    ok = {"model": "m", "messages": follow, "max_tokens": 4}
    cases = {
        "no messages": {"model": "m"}, "messages str": {"messages": "x"}, "messages obj": {"messages": {}},
        "messages empty": {"messages": []}, "messages ints": {"messages": [1, 2]}, "messages null": {"messages": [None]},
        "role robot": {"messages": [{"role": "robot", "content": "beep"}]},
        "role missing": {"messages": [{"content": "hi"}]}, "content int": {"messages": [{"role": "user", "content": 5}]},
        "content null": {"messages": [{"role": "user", "content": None}]},
        "content dict": {"messages": [{"role": "user", "content": {"a": 1}}]},
        "image part": {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
        "part not dict": {"messages": [{"role": "user", "content": ["x"]}]},
        "last assistant": {"messages": follow[:-1]},
        "too many messages": {"messages": HI * 300},
        "content too long": {"messages": follow[:-1] + [{"role": "user", "content": "x" * 100_001}]},
        "prompt over context": {"messages": follow[:-1] + [{"role": "user", "content": "word " * 400}]},
    }
    fields = {
        "max_tokens": [0, -1, "ten", 1e10, 10**30, [4], 5000], "max_completion_tokens": [0, 5000],
        "temperature": [-1, 3, "hot", [1]], "top_p": [0, 2, "x"],
        "n": [0, 9, 100, "two"], "seed": [2**64, -(2**64), "x", 1.5],
        "stop": [["a", "b", "c", "d", "e"], 3, ["x" * 300], [1, 2], {"a": 1}, ["ok", "\ud800"]],
        "user": ["u" * 300, 123, ["x"], "me\udc00"], "stream": [[1], {"a": 1}], "stream_options": ["x", 3],
        "top_logprobs": [5, -1], "logprobs": ["sure", [1]], "model": [123, ["m"]],
    }
    for name, values in fields.items():
        for i, value in enumerate(values):
            cases[f"{name}[{i}]"] = {**ok, name: value}
    bad_unicode = ["ok \ud800", "\udc00", "\udfff\ud800 reversed pair", "tail \udbff"]
    for i, text in enumerate(bad_unicode):
        cases[f"surrogate followup {i}"] = {**ok, "messages": follow[:-1] + [{"role": "user", "content": text}]}
    cases["surrogate in a part"] = {**ok, "messages": follow[:-1] + [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "\ud800"}]}]}
    cases["surrogate in system"] = {**ok, "messages": [{"role": "system", "content": "\ud800"}] + follow}
    return [(k, {"model": "m", **v}) for k, v in cases.items()]


def _hostile_raw(limit: int) -> list[tuple[str, bytes]]:
    msg = b'{"role": "user", "content": "hi"}'
    return [
        ("empty", b""), ("not json", b"{not json"), ("array", b"[]"), ("null", b"null"), ("string", b'"s"'),
        ("number", b"123"), ("truncated", b'{"messages": [{"role": "user", "content": "hi"'),
        ("trailing garbage", b'{"messages": [' + msg + b"]} xyz"),
        ("bom", b"\xef\xbb\xbf" + b'{"messages": [' + msg + b"]}"),
        ("deep arrays 50k", b'{"messages": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"),
        ("deep objects 10k", b'{"messages": [' + b'{"a": ' * 10_000 + b"1" + b"}" * 10_000 + b"]}"),
        ("deep unclosed 50k", b"[" * 50_000),
        ("invalid utf-8", b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}'),
        ("NaN", b'{"messages": [' + msg + b'], "temperature": NaN}'),
        ("Infinity", b'{"messages": [' + msg + b'], "max_tokens": Infinity}'),
        ("oversized", b'{"messages": [' + msg + b'], "pad": "' + b"x" * (limit + 1) + b'"}'),
        ("100k messages", b'{"messages": [' + b", ".join([msg] * 100_000) + b"]}"),
    ]


def test_fuzz_hostile_requests(app):
    first = _chat(app, {"model": "m", "messages": HI, "max_tokens": 6, "temperature": 0})
    assert first.status_code == 200
    reply = first.json()["choices"][0]["message"]["content"]
    follow = HI + [{"role": "assistant", "content": reply}, {"role": "user", "content": "Shorter, please."}]
    before = app.ledger()
    limit = Config().serve.max_body_bytes

    statuses = {}
    for name, body in _hostile_bodies(follow):
        r = _chat(app, body)
        statuses[name] = r.status_code
        assert 400 <= r.status_code < 500, (name, r.status_code, r.text[:300])
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}, name
    for name, raw in _hostile_raw(limit):
        t0 = time.perf_counter()
        r = _chat(app, raw=raw)
        statuses[name] = r.status_code
        assert 400 <= r.status_code < 500, (name, r.status_code, r.text[:300])
        assert r.json()["error"]["type"] == "invalid_request_error", name
        if name == "100k messages":
            assert r.status_code == 413 and time.perf_counter() - t0 < 2.0
    for method, path in (("GET", "/v1/chat/completions"), ("POST", "/v1/nothing"), ("DELETE", "/v1/models")):
        r = app.http.request(method, path)
        statuses[f"{method} {path}"] = r.status_code
        assert 400 <= r.status_code < 500, (method, path, r.status_code)
    assert len(statuses) >= 60, len(statuses)
    assert statuses["oversized"] == 413 and statuses["surrogate followup 0"] == 400
    assert statuses["deep arrays 50k"] == 400

    after = app.ledger()
    assert after["captured"] == before["captured"] and after["unmatched"] == before["unmatched"]  # nothing observed
    assert after["outstanding"] == before["outstanding"]  # the real reply is still waiting for its follow-up

    # alive, and the genuine follow-up is still captured
    assert _chat(app, {"model": "m", "messages": follow, "max_tokens": 4}).status_code == 200
    assert app.ledger()["captured"] == before["captured"] + 1
    health = app.http.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"

