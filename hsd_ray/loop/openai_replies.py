"""The OpenAI Chat Completions reply side: completion objects, streamed chunks and SSE framing, for one or `n`
choices (the request side and error bodies: openai_api.py). Pure: no Ray, no torch.

A request for `n` choices gets `choices[i]` with `index` i. Streamed, each choice's chunks carry its index; they are
sent choice after choice (OpenAI interleaves them; clients assemble by index either way), then one chunk with the
finish_reason of every choice, then the usage chunk (completion tokens summed over the choices).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass

SSE_DONE = "data: [DONE]\n\n"


@dataclass(frozen=True)
class Choice:
    """One generated choice, as the builders need it: its text, why it ended, its per-token text pieces (streaming)
    and `logprob_entries` (when the client asked for log-probs)."""

    text: str
    finish_reason: str
    pieces: list[str] | None = None
    logprobs: list[dict] | None = None


def completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_completion(
    *,
    id: str,  # noqa: A002 - the OpenAI field name
    model: str,
    fingerprint: str,
    choices: list[Choice],
    prompt_tokens: int,
    completion_tokens: int,
    created: int | None = None,
) -> dict:
    """A non-streaming `chat.completion` object; `fingerprint` names the policy version(s) that produced it;
    `completion_tokens` counts the tokens of every choice."""
    return {
        "id": id,
        "object": "chat.completion",
        "created": int(time.time()) if created is None else created,
        "model": model,
        "system_fingerprint": fingerprint,
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": c.text},
                "logprobs": None if c.logprobs is None else {"content": c.logprobs, "refusal": None},
                "finish_reason": c.finish_reason,
            }
            for i, c in enumerate(choices)
        ],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def logprob_entries(pieces: list[str], logprobs: list[float]) -> list[dict]:
    """OpenAI `logprobs.content`: one entry per generated token (text piece, raw-model log-prob, UTF-8 bytes)."""
    return [
        {"token": p, "logprob": float(lp), "bytes": list(p.encode("utf-8")), "top_logprobs": []}
        for p, lp in zip(pieces, logprobs)
    ]


def chat_chunk(
    *,
    id: str,  # noqa: A002
    model: str,
    fingerprint: str,
    created: int,
    delta: dict | None = None,
    finish_reason: str | None = None,
    include_usage: bool = False,
    index: int = 0,
) -> dict:
    """One `chat.completion.chunk` for choice `index`. With include_usage every such chunk carries "usage": null
    (the usage itself comes in `usage_chunk`, as OpenAI does)."""
    chunk = {
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": fingerprint,
        "choices": [{"index": index, "delta": delta or {}, "logprobs": None, "finish_reason": finish_reason}],
    }
    if include_usage:
        chunk["usage"] = None
    return chunk


def usage_chunk(
    *, id: str, model: str, fingerprint: str, created: int, prompt_tokens: int, completion_tokens: int  # noqa: A002
) -> dict:
    """The last chunk when stream_options.include_usage: no choices, only usage."""
    return {
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": fingerprint,
        "choices": [],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def stream_chunks(
    *,
    id: str,  # noqa: A002
    model: str,
    fingerprint: str,
    created: int,
    choices: list[Choice],
    prompt_tokens: int,
    completion_tokens: int,
    include_usage: bool,
) -> tuple[list[dict], list[dict]]:
    """All chunks of a streamed reply, as (content chunks, closing chunks): per choice, the role delta and one
    content delta per piece; then the finish_reason chunks and, with include_usage, the usage chunk. ([DONE]
    follows.)"""
    common = dict(id=id, model=model, fingerprint=fingerprint, created=created, include_usage=include_usage)
    body = []
    for i, c in enumerate(choices):
        body.append(chat_chunk(delta={"role": "assistant", "content": ""}, index=i, **common))
        body += [chat_chunk(delta={"content": p}, index=i, **common) for p in (c.pieces or []) if p]
    closing = closing_chunks(finish_reasons=[c.finish_reason for c in choices], prompt_tokens=prompt_tokens,
                             completion_tokens=completion_tokens, **common)
    return body, closing


def closing_chunks(
    *, id: str, model: str, fingerprint: str, created: int, finish_reasons: list[str],  # noqa: A002
    prompt_tokens: int, completion_tokens: int, include_usage: bool,
) -> list[dict]:
    """The end of a streamed reply: a chunk with the finish_reason of each choice and, with include_usage, the
    usage chunk."""
    common = dict(id=id, model=model, fingerprint=fingerprint, created=created)
    closing = [chat_chunk(delta={}, finish_reason=reason, include_usage=include_usage, index=i, **common)
               for i, reason in enumerate(finish_reasons)]
    if include_usage:
        closing.append(usage_chunk(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, **common))
    return closing


def sse(obj: dict) -> str:
    """One server-sent event carrying a JSON object."""
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def text_pieces(tokenizer, token_ids: list[int], text: str) -> list[str]:
    """Split `text` (the decoded reply) into one piece per token for streaming; the pieces concatenate to `text`.

    Incremental detokenisation over a short sliding window (as vLLM does), so cost is linear in the reply: each piece is
    decode(window + token) minus decode(window). A token that leaves an incomplete UTF-8 character (U+FFFD at the end)
    contributes nothing until the character completes. Once a piece disagrees with `text` (a reply cut at a stop
    string), the rest of `text` is sent as one last piece.
    """
    pieces, sent = [], 0
    prefix_offset = read_offset = 0
    for i in range(1, len(token_ids) + 1):
        before = tokenizer.decode(token_ids[prefix_offset:read_offset], skip_special_tokens=True)
        after = tokenizer.decode(token_ids[prefix_offset:i], skip_special_tokens=True)
        if len(after) <= len(before) or after.endswith("\ufffd"):
            continue
        piece = after[len(before) :]
        prefix_offset, read_offset = read_offset, i
        if not text.startswith(piece, sent):
            break
        pieces.append(piece)
        sent += len(piece)
    if sent < len(text):
        pieces.append(text[sent:])
    return pieces
