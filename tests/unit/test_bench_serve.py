"""bench.bench_serve's bookkeeping: per-request TTFT / inter-token latency from a stream, and the summary ratios."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from bench import bench_serve

pytestmark = pytest.mark.unit


def _chunk(content=None, usage=None, index=0):
    choices = [] if content is None else [SimpleNamespace(index=index, delta=SimpleNamespace(content=content))]
    return SimpleNamespace(choices=choices, usage=usage)


class _Client:
    """An OpenAI client stand-in whose stream yields chunks at given delays."""

    def __init__(self, steps):
        self.steps = steps
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self._create))

    def _create(self, **kw):
        self.sent = kw
        import time

        for delay, chunk in self.steps:
            time.sleep(delay)
            yield chunk


def test_streamed_request_times_first_token_and_mean_gap_per_token():
    steps = [(0.0, _chunk("")), (0.05, _chunk("Hel")), (0.02, _chunk("lo")), (0.02, _chunk(" you")),
             (0.0, _chunk(None, usage=SimpleNamespace(completion_tokens=5)))]
    client = _Client(steps)
    args = SimpleNamespace(max_tokens=8, top_p=0.9)
    r = bench_serve._streamed(client, [{"role": "user", "content": "hi"}], args, "u")
    assert r["text"] == "Hello you" and r["tokens"] == 5
    # every sampling setting is sent, none left to a server's own default (they differ: top_p 0.9 here, 1.0 in vLLM)
    sent = client.sent
    assert (sent["max_tokens"], sent["temperature"], sent["top_p"]) == (8, 0.7, 0.9)
    assert sent["stream"] and sent["stream_options"] == {"include_usage": True}
    assert 0.04 <= r["ttft_s"] < 0.5  # the empty role chunk does not count as the first token
    assert r["itl_s"] == pytest.approx(0.04 / 4, abs=0.01)  # (last - first content) / (tokens - 1)


def test_summary_and_ratios():
    rounds = [{"wall_s": 2.0, "requests": [{"ttft_s": 0.1, "itl_s": 0.01, "tokens": 10},
                                           {"ttft_s": 0.3, "itl_s": None, "tokens": 1}]}]
    s = bench_serve._summary(rounds)
    assert s["requests"] == 2 and s["requests_per_s"] == 1.0 and s["tokens_per_s"] == 5.5
    assert s["ttft_p50_s"] == pytest.approx(0.2) and s["itl_p50_s"] == pytest.approx(0.01)
    res = {"capture": {"4": {**s, "tokens_per_s": 9.0}}, "vllm": {"4": {**s, "tokens_per_s": 10.0}},
           "nocapture": {"4": {**s, "tokens_per_s": 9.5}}}
    r = bench_serve._ratios(res, [4])["4"]
    assert r["capture/vllm tokens/s"] == pytest.approx(0.9) and r["capture/nocapture tokens/s"] == pytest.approx(9 / 9.5)
    assert r["capture/vllm TTFT p50"] == pytest.approx(1.0) and "offline/vllm tokens/s" not in r
