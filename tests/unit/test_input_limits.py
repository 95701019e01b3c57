"""Hostile input is refused cheaply with an OpenAI-style 4xx (hsd_ray/loop/openai_api.py, core/turns.py)."""

from __future__ import annotations

import json
import time

import pytest

from hsd_ray.config import ServeConfig
from hsd_ray.core.turns import TurnFormatError, validate_messages
from hsd_ray.loop import openai_api as oa

pytestmark = pytest.mark.unit

SCFG = ServeConfig(max_messages=8, max_message_chars=50, max_user_chars=10, max_stop_sequences=2, max_stop_chars=5)
HI = [{"role": "user", "content": "hi"}]


def _error(body, scfg=SCFG) -> oa.APIError:
    with pytest.raises(oa.APIError) as info:
        oa.parse_chat_request(body, scfg)
    assert 400 <= info.value.status_code < 500
    return info.value


def _json_error(raw: bytes, depth: int = 32) -> oa.APIError:
    with pytest.raises(oa.APIError) as info:
        oa.parse_json(raw, depth)
    assert info.value.status_code == 400
    return info.value


def test_json_depth_counts_brackets_outside_strings():
    assert oa.json_depth(b'{"a": [1, {"b": "[[[[{{{"}]}') == 3
    assert oa.json_depth(b'{"a": "\\"[[[[", "b": [[]]}') == 3
    assert oa.json_depth(b"123") == 0


def test_deep_nesting_is_refused_before_parsing_fast():
    raw = b'{"messages": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    t0 = time.perf_counter()
    err = _json_error(raw)
    assert time.perf_counter() - t0 < 0.5
    assert err.code == "nesting_too_deep" and "50001" in err.message
    assert oa.parse_json(b'{"a": [[1]]}', 32) == {"a": [[1]]}


def test_bad_encodings_and_constants_are_400():
    assert _json_error(b'{"a": "\xff"}').code == "invalid_encoding"
    assert "not valid JSON" in _json_error(b'{"temperature": NaN}').message
    assert "not valid JSON" in _json_error(b'{"a": ').message
    assert "not valid JSON" in _json_error(b"[" * 10 + b"}" * 10).message


def test_lone_surrogate_is_refused_naming_the_field():
    body = oa.parse_json(json.dumps({"messages": [{"role": "user", "content": "ok \ud800"}]}).encode(), 32)
    err = _error(body)
    assert err.param == "messages" and "messages[0].content" in err.message and "Unicode" in err.message
    assert _error({"messages": HI, "user": "a\udc00"}).param == "user"
    assert _error({"messages": HI, "stop": ["\ud800"]}).param == "stop[0]"
    parts = [{"role": "user", "content": [{"type": "text", "text": "\udfff"}]}]
    with pytest.raises(TurnFormatError, match=r"messages\[0\]\.content"):
        validate_messages(parts)


def test_limits_on_counts_and_lengths():
    assert _error({"messages": HI * 9}).code == "too_many_messages"
    err = _error({"messages": [{"role": "user", "content": "x" * 51}]})
    assert err.param == "messages[0].content" and err.code == "string_above_max_length"
    assert _error({"messages": HI, "user": "u" * 11}).param == "user"
    assert _error({"messages": HI, "stop": ["a", "b", "c"]}).param == "stop"
    assert _error({"messages": HI, "stop": "abcdef"}).param == "stop[0]"
    call = oa.parse_chat_request({"messages": HI * 7 + [{"role": "user", "content": "x" * 50}], "user": "u" * 10,
                                  "stop": ["abcde", "b"]}, SCFG)
    assert len(call.messages) == 8 and call.stop == ["abcde", "b"]


def test_100k_messages_refused_before_any_per_message_work():
    scfg = ServeConfig(max_body_bytes=2**30)  # the body limit alone would refuse it earlier (413)
    raw = json.dumps({"messages": [{"role": "user", "content": "hi"}] * 100_000}).encode()
    t0 = time.perf_counter()
    body = oa.parse_json(raw, scfg.max_json_depth)
    t_parse = time.perf_counter() - t0
    t0 = time.perf_counter()
    with pytest.raises(oa.APIError) as info:
        oa.parse_chat_request(body, scfg)
    t_check = time.perf_counter() - t0
    assert info.value.code == "too_many_messages"
    # Measured side by side, so machine load cancels: the count is checked before any per-message validation,
    # which would cost at least as much as parsing the 3 MB of JSON did.
    assert t_check < 0.25 * t_parse, (t_check, t_parse)


class _Request:
    def __init__(self, body: bytes, declared: int | None):
        self.headers = {} if declared is None else {"content-length": str(declared)}
        self._body = body

    async def stream(self):
        for i in range(0, len(self._body), 1000):
            yield self._body[i : i + 1000]


def test_oversized_body_is_413_declared_or_streamed():
    import asyncio

    with pytest.raises(oa.APIError) as info:
        asyncio.run(oa.read_body(_Request(b"", declared=5000), 4096))
    assert info.value.status_code == 413 and info.value.code == "request_too_large"
    with pytest.raises(oa.APIError) as info:
        asyncio.run(oa.read_body(_Request(b"x" * 5000, declared=None), 4096))
    assert info.value.status_code == 413
    assert asyncio.run(oa.read_body(_Request(b"x" * 4096, declared=4096), 4096)) == b"x" * 4096
