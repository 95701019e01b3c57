"""The OpenAI Chat Completions wire format (hsd_ray/loop/openai_api.py): validation, error bodies, responses, SSE."""

from __future__ import annotations

import hashlib
import json

import pytest
from pydantic import BaseModel

from hsd_ray.config import ServeConfig
from hsd_ray.loop import openai_api as oa
from hsd_ray.loop import openai_replies as replies

pytestmark = pytest.mark.unit

SCFG = ServeConfig(max_tokens=32, max_tokens_limit=64, temperature=0.5, top_p=0.8)


def _req(**kw):
    body = {"model": "hsd-policy", "messages": [{"role": "user", "content": "hi"}]}
    body.update(kw)
    return body


def _error(body) -> oa.APIError:
    with pytest.raises(oa.APIError) as info:
        oa.parse_chat_request(body, SCFG)
    err = info.value
    assert err.status_code == 400
    shape = err.body()
    assert set(shape) == {"error"}
    assert set(shape["error"]) == {"message", "type", "param", "code"}
    assert shape["error"]["type"] == "invalid_request_error"
    return err


# ---- requests ------------------------------------------------------------------------------------------------------


def test_good_request_applies_defaults():
    call = oa.parse_chat_request(_req(), SCFG)
    assert call.messages == [{"role": "user", "content": "hi"}]
    assert (call.max_tokens, call.temperature, call.top_p) == (32, 0.5, 0.8)
    assert call.stop == [] and call.seed is None and not call.stream and not call.include_usage


def test_good_request_with_every_field():
    body = _req(
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "more"},
        ],
        max_tokens=10,
        temperature=0,
        top_p=1,
        n=1,
        stream=True,
        stream_options={"include_usage": True},
        stop="\n",
        seed=3,
        user="u1",
    )
    call = oa.parse_chat_request(body, SCFG)
    assert call.messages[1] == {"role": "user", "content": "ab"}
    assert (call.max_tokens, call.temperature, call.top_p, call.seed) == (10, 0.0, 1.0, 3)
    assert call.stop == ["\n"] and call.stream and call.include_usage and call.user == "u1"


def test_max_completion_tokens_wins_over_max_tokens():
    assert oa.parse_chat_request(_req(max_tokens=5, max_completion_tokens=7), SCFG).max_tokens == 7


def test_neutral_values_and_fields_that_do_not_change_the_reply_are_accepted():
    body = _req(frequency_penalty=0, presence_penalty=0.0, logit_bias={}, tools=[], tool_choice="none",
                response_format={"type": "text"}, metadata={"a": "b"}, parallel_tool_calls=False, store=True,
                modalities=["text"], prediction={"type": "content", "content": "x"}, service_tier="auto",
                prompt_cache_key="k", safety_identifier="s", audio=None)
    assert oa.parse_chat_request(body, SCFG).messages[-1]["content"] == "hi"


@pytest.mark.parametrize("field", ["top_k", "repetition_penalty", "foo"])
def test_a_field_that_is_not_openais_is_refused_as_openai_does(field):
    err = _error(_req(**{field: 1}))
    assert err.param == field and err.message == f"Unrecognized request argument supplied: {field}"
    assert err.code == "unrecognized_argument"


@pytest.mark.parametrize(
    "field, value",
    [
        ("tools", [{"type": "function", "function": {"name": "f", "parameters": {}}}]),
        ("functions", [{"name": "f", "parameters": {}}]),
        ("tool_choice", "required"),
        ("tool_choice", {"type": "function", "function": {"name": "f"}}),
        ("function_call", {"name": "f"}),
        ("response_format", {"type": "json_object"}),
        ("response_format", {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}),
        ("response_format", "text"),
        ("logit_bias", {"50256": -100}),
        ("audio", {"voice": "alloy", "format": "wav"}),
        ("modalities", ["text", "audio"]),
        ("web_search_options", {}),
        ("reasoning_effort", "low"),
        ("verbosity", "low"),
    ],
)
def test_output_changing_fields_the_service_cannot_honour_are_refused(field, value):
    err = _error(_req(**{field: value}))
    assert err.param == field and field in err.message and err.code == "unsupported_parameter"


def test_penalties_and_top_logprobs_reach_the_sampling_params():
    call = oa.parse_chat_request(_req(presence_penalty=1.5, frequency_penalty=-0.5, logprobs=True, top_logprobs=20),
                                 SCFG)
    params = call.sampling(max_tokens=7, adapter_id="a")
    assert (params.presence_penalty, params.frequency_penalty, params.top_logprobs) == (1.5, -0.5, 20)
    assert (params.max_tokens, params.adapter_id, params.temperature) == (7, "a", call.temperature)
    plain = oa.parse_chat_request(_req(), SCFG).sampling(max_tokens=7, adapter_id="a")
    assert (plain.presence_penalty, plain.frequency_penalty, plain.top_logprobs) == (0.0, 0.0, 0)
    for field, value in [("presence_penalty", 2.5), ("frequency_penalty", -3), ("top_logprobs", 21)]:
        assert _error(_req(**{field: value, "logprobs": True})).param == field
    err = _error(_req(top_logprobs=2))  # OpenAI: top_logprobs needs logprobs
    assert err.param == "top_logprobs" and "logprobs must be set to true" in err.message


def test_n_choices_up_to_the_configured_limit():
    assert oa.parse_chat_request(_req(), SCFG).n == 1
    assert oa.parse_chat_request(_req(n=3), SCFG).n == 3
    err = _error(_req(n=SCFG.max_n + 1))
    assert err.param == "n" and f"at most {SCFG.max_n}" in err.message
    assert _error(_req(n=0)).param == "n"


@pytest.mark.parametrize(
    "messages, fragment",
    [
        ([], "non-empty"),
        ([{"role": "tool", "content": "x"}], "role"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], "text part"),
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "last message"),
        ("hello", "non-empty list"),
        ([{"role": "user", "content": None}], "content is required"),
        ([{"role": "system", "content": "s"}, {"role": "user"}], "messages[1].content is required"),
    ],
)
def test_bad_messages_are_rejected(messages, fragment):
    err = _error(_req(messages=messages))
    assert err.param == "messages" and fragment in err.message


def test_developer_role_is_the_system_message_and_an_assistant_may_have_null_content():
    call = oa.parse_chat_request(_req(messages=[{"role": "developer", "content": "Be brief."},
                                                {"role": "user", "content": "q"},
                                                {"role": "assistant", "content": None},
                                                {"role": "user", "content": "again"}]), SCFG)
    assert call.messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "q"},
                             {"role": "assistant", "content": ""}, {"role": "user", "content": "again"}]


def test_missing_messages_is_rejected():
    assert _error({"model": "m"}).param == "messages"


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_is_bounded(field):
    err = _error(_req(**{field: SCFG.max_tokens_limit + 1}))
    assert err.param == field and str(SCFG.max_tokens_limit) in err.message
    assert _error(_req(**{field: 0})).param == field


@pytest.mark.parametrize("stop", [3, ["a", 1], ["a", "b", "c", "d", "e"], {"x": "y"}])
def test_bad_stop_is_rejected(stop):
    assert _error(_req(stop=stop)).param == "stop"


def test_stop_list_is_kept():
    assert oa.parse_chat_request(_req(stop=["a", "b"]), SCFG).stop == ["a", "b"]


@pytest.mark.parametrize(
    "field, value", [("temperature", 3), ("top_p", 0), ("stream", "yes please"), ("seed", "x"), ("seed", 2**64)]
)
def test_bad_sampling_values_name_the_param(field, value):
    assert _error(_req(**{field: value})).param == field


def test_body_must_be_an_object():
    assert "JSON object" in _error(["not", "an", "object"]).message


# ---- FastAPI: 422 never leaks --------------------------------------------------------------------------------------


class _TypedBody(BaseModel):
    x: int


def test_fastapi_validation_errors_become_400():
    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    app = FastAPI()
    oa.install_error_handlers(app)

    @app.post("/typed")
    async def typed(body: _TypedBody):
        return {"x": body.x}

    @app.post("/raises")
    async def raises():
        raise oa.APIError("nope", param="thing")

    with TestClient(app) as client:
        r = client.post("/typed", json={"x": "not an int"})
        assert r.status_code == 400
        assert r.json()["error"]["param"] == "x" and r.json()["error"]["type"] == "invalid_request_error"
        r = client.post("/raises")
        assert r.status_code == 400 and r.json() == oa.error_body("nope", param="thing")
        r = client.get("/nowhere")
        assert r.status_code == 404 and set(r.json()["error"]) == {"message", "type", "param", "code"}


# ---- responses -----------------------------------------------------------------------------------------------------


def test_chat_completion_shape():
    cid = replies.completion_id()
    assert cid.startswith("chatcmpl-")
    body = replies.chat_completion(
        id=cid, model="hsd-policy", fingerprint="hsd-base-v3", choices=[replies.Choice("hello", "length")],
        prompt_tokens=5, completion_tokens=2,
    )
    assert body["object"] == "chat.completion" and body["id"] == cid and isinstance(body["created"], int)
    assert body["system_fingerprint"] == "hsd-base-v3" and body["model"] == "hsd-policy"
    (choice,) = body["choices"]
    assert choice["message"] == {"role": "assistant", "content": "hello"} and choice["finish_reason"] == "length"
    assert choice["index"] == 0 and choice["logprobs"] is None
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    json.dumps(body)


def test_chat_completion_with_n_choices():
    lp = replies.logprob_entries(_ByteTokenizer(), [ord("a")], [-0.5])
    body = replies.chat_completion(
        id="chatcmpl-x", model="m", fingerprint="f", prompt_tokens=5, completion_tokens=3,
        choices=[replies.Choice("a", "stop", logprobs=lp), replies.Choice("bc", "length", logprobs=[])],
    )
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert [c["message"]["content"] for c in body["choices"]] == ["a", "bc"]
    assert [c["finish_reason"] for c in body["choices"]] == ["stop", "length"]
    assert body["choices"][0]["logprobs"]["content"][0]["logprob"] == -0.5
    assert body["usage"]["total_tokens"] == 8


@pytest.mark.parametrize("include_usage", [False, True])
def test_stream_chunks_shape(include_usage):
    content, closing = replies.stream_chunks(
        id="chatcmpl-x", model="m", fingerprint="hsd-base-v0", created=1,
        choices=[replies.Choice("Hello", "stop", ["He", "llo", ""])], prompt_tokens=4, completion_tokens=2,
        include_usage=include_usage,
    )
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == "chatcmpl-x" for c in content + closing)
    assert content[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"]["content"] for c in content[1:]] == ["He", "llo"]  # empty pieces skipped
    assert all(c["choices"][0]["finish_reason"] is None for c in content)
    assert closing[0]["choices"][0]["finish_reason"] == "stop" and closing[0]["choices"][0]["delta"] == {}
    if include_usage:
        assert all(c["usage"] is None for c in content + closing[:1])
        assert closing[-1]["choices"] == [] and closing[-1]["usage"]["total_tokens"] == 6
    else:
        assert len(closing) == 1 and all("usage" not in c for c in content + closing)


def test_stream_chunks_for_n_choices_assemble_by_index():
    content, closing = replies.stream_chunks(
        id="chatcmpl-x", model="m", fingerprint="f", created=1, prompt_tokens=4, completion_tokens=3,
        choices=[replies.Choice("ab", "stop", ["a", "b"]), replies.Choice("c", "length", ["c"])], include_usage=True,
    )
    text = {0: "", 1: ""}
    for c in content:
        (choice,) = c["choices"]
        text[choice["index"]] += choice["delta"].get("content", "")
    assert text == {0: "ab", 1: "c"}
    assert [(c["choices"][0]["index"], c["choices"][0]["finish_reason"]) for c in closing[:2]] == [(0, "stop"),
                                                                                                  (1, "length")]
    assert closing[2]["choices"] == [] and closing[2]["usage"]["completion_tokens"] == 3


def test_sse_framing():
    event = replies.sse({"a": "é"})
    assert event.startswith("data: ") and event.endswith("\n\n") and json.loads(event[6:]) == {"a": "é"}
    assert replies.SSE_DONE == "data: [DONE]\n\n"


class _ByteTokenizer:
    """Each id is one UTF-8 byte: multi-byte characters span several ids (like byte-level BPE)."""

    def decode(self, ids, skip_special_tokens=True):
        return bytes(ids).decode("utf-8", errors="replace")


@pytest.mark.parametrize("text", ["hello world", "héllo → ok", ""])
def test_text_pieces_concatenate_to_text(text):
    ids = list(text.encode())
    pieces = [p for p, _ in replies.piece_spans(_ByteTokenizer(), ids, text)]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert len(pieces) == len(text)  # one piece per complete character here


def test_text_pieces_with_the_tiny_tokenizer(tiny_model_dir):
    import random

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    rng = random.Random(0)
    for _ in range(20):
        ids = [rng.randrange(3, len(tok)) for _ in range(rng.randrange(1, 40))]  # random ids: broken UTF-8 included
        text = tok.decode(ids, skip_special_tokens=True)
        pieces = [p for p, _ in replies.piece_spans(tok, ids, text)]
        assert "".join(pieces) == text and len(pieces) <= len(ids) + 1


def test_text_pieces_clip_to_a_shorter_text():
    ids = list(b"answer STOP more")
    assert "".join(p for p, _ in replies.piece_spans(_ByteTokenizer(), ids, "answer ")) == "answer "


def test_logprob_entries_are_one_per_token_with_exact_bytes(tiny_model_dir):
    """A multi-token character: one entry per token, each with its own bytes (joined, they are the character's) and
    a "bytes:" token where the bytes are not UTF-8 on their own; top alternatives in the same form."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    ids = tok.encode("Hi 🎉 ü", add_special_tokens=False)
    assert len(ids) > len("Hi 🎉 ü")  # the tiny tokenizer spells these characters in bytes
    top = [[(t, -0.1), (ids[0], -2.5)] for t in ids]
    entries = replies.logprob_entries(tok, ids, [-float(i) for i in range(len(ids))], top)
    assert len(entries) == len(ids) and [e["logprob"] for e in entries] == [-float(i) for i in range(len(ids))]
    assert b"".join(bytes(e["bytes"]) for e in entries) == "Hi 🎉 ü".encode()
    partial = [e for e in entries if e["token"].startswith("bytes:")]
    assert partial and all(e["token"] == "bytes:" + "".join(f"\\x{b:02x}" for b in e["bytes"]) for e in partial)
    assert all(len(e["top_logprobs"]) == 2 and e["top_logprobs"][0]["bytes"] == e["bytes"] for e in entries)
    assert entries[0]["top_logprobs"][1] == {"token": "H", "logprob": -2.5, "bytes": [ord("H")]}
    assert replies.logprob_entries(tok, ids[:1], [-0.5])[0]["top_logprobs"] == []  # none asked for
    assert replies.logprob_entries(tok, ids[:1], [-float("inf")])[0]["logprob"] == -9999.0  # JSON has no -inf


def test_streamed_pieces_carry_the_entries_of_the_tokens_they_complete():
    text = "aé"  # "é" is two byte-tokens: the piece "é" completes both
    ids = list(text.encode())
    spans = replies.piece_spans(_ByteTokenizer(), ids, text)
    assert spans == [("a", 1), ("é", 3)]
    entries = [{"logprob": -float(i)} for i in range(len(ids))]
    assert replies.logprobs_by_piece(entries, spans) == [entries[:1], entries[1:]]
    content, _ = replies.stream_chunks(
        id="c", model="m", fingerprint="f", created=1, prompt_tokens=1, completion_tokens=3, include_usage=False,
        choices=[replies.Choice(text, "stop", [p for p, _ in spans], None, replies.logprobs_by_piece(entries, spans))])
    assert [c["choices"][0]["logprobs"] for c in content] == [None, {"content": entries[:1], "refusal": None},
                                                             {"content": entries[1:], "refusal": None}]


def test_unsent_logprobs_wait_for_the_chunk_that_completes_a_character():
    from hsd_ray.core.engine_api import GenerationDelta

    unsent = replies.UnsentLogprobs(_ByteTokenizer(), n=2)
    first, second = [GenerationDelta([b], "", [-float(b)]) for b in "é".encode()]
    assert unsent.add(1, first) is None
    second.text = "é"
    taken = unsent.add(1, second, take=True)
    assert [e["logprob"] for e in taken] == [-0xC3, -0xA9] and unsent.waiting == [[], []]


# ---- user identity -------------------------------------------------------------------------------------------------


def test_store_false_opts_out_and_absent_or_true_captures():
    assert oa.parse_chat_request(_req(), SCFG).store is True
    assert oa.parse_chat_request(_req(store=True), SCFG).store is True
    assert oa.parse_chat_request(_req(store=False), SCFG).store is False
    err = _error(_req(store={"no": 1}))
    assert err.body()["error"]["param"] == "store"


def test_user_identity():
    key_hash = "key-" + hashlib.sha256(b"sk-secret").hexdigest()[:16]
    assert oa.user_identity("alice", "Bearer sk-secret") == "alice"
    assert oa.user_identity(None, "Bearer sk-secret") == key_hash
    assert oa.user_identity("", "bearer  sk-secret ") == key_hash
    assert oa.user_identity(None, None) == "anonymous"
    assert oa.user_identity(None, "Basic abc") == "anonymous"
    assert oa.user_identity("  ", "Bearer ") == "anonymous"
    assert "sk-secret" not in oa.user_identity(None, "Bearer sk-secret")


def test_module_does_not_import_ray():
    import subprocess
    import sys

    code = "import sys, hsd_ray.loop.openai_api, hsd_ray.loop.openai_replies; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"
