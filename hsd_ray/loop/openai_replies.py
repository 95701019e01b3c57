"""The OpenAI Chat Completions reply side: completion objects, streamed chunks and SSE framing, for one or `n`
choices (the request side and error bodies: openai_api.py). Pure: no Ray, no torch.

A request for `n` choices gets `choices[i]` with `index` i. Streamed, each choice's chunks carry its index; they are
sent choice after choice (OpenAI interleaves them; clients assemble by index either way), then one chunk with the
finish_reason of every choice, then the usage chunk (completion tokens summed over the choices).
"""

from __future__ import annotations

import functools
import json
import time
import uuid
from dataclasses import dataclass

SSE_DONE = "data: [DONE]\n\n"


@dataclass(frozen=True)
class Choice:
    """One generated choice, as the builders need it: its text, why it ended, its text pieces (streaming) and
    `logprob_entries` (when the client asked for log-probs; streamed, `piece_logprobs[j]` are the entries of the
    tokens piece j completes)."""

    text: str
    finish_reason: str
    pieces: list[str] | None = None
    logprobs: list[dict] | None = None
    piece_logprobs: list[list[dict]] | None = None


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


def logprob_entries(tokenizer, token_ids: list[int], logprobs: list[float], top: list | None = None) -> list[dict]:
    """OpenAI `logprobs.content`: one entry per generated token — its text, raw-model log-prob and exact bytes (a
    token that is part of a multi-byte character shows as "bytes:\\xf0\\x9f"; its `bytes` join with its neighbours'
    into the character), and its `top` alternatives (per token, (id, log-prob) best first) in the same form."""
    alternatives = [] if top is None else top
    all_ids = list(token_ids) + [tok for row in alternatives for tok, _ in row]
    pieces = iter(token_bytes(tokenizer, all_ids))
    entries = [_entry(next(pieces), lp) for lp in logprobs[: len(token_ids)]]
    for entry, row in zip(entries, alternatives):
        entry["top_logprobs"] = [_entry(next(pieces), lp) for _, lp in row]
    for entry in entries[len(alternatives):]:
        entry["top_logprobs"] = []
    return entries


class UnsentLogprobs:
    """The log-prob entries of each choice's streamed tokens not sent yet: a token inside a multi-byte character
    comes with no text, so its entry waits for the chunk of the token that completes the character."""

    def __init__(self, tokenizer, n: int):
        self.tokenizer, self.waiting = tokenizer, [[] for _ in range(n)]

    def add(self, i: int, delta, take: bool = False) -> list[dict] | None:
        """Add a delta's tokens to choice i; with `take`, return (and clear) everything waiting, for its chunk."""
        self.waiting[i] += logprob_entries(self.tokenizer, delta.token_ids, delta.logprobs, delta.top_logprobs)
        if take:
            out, self.waiting[i] = self.waiting[i], []
            return out
        return None


def _entry(raw: bytes, logprob: float) -> dict:
    try:
        token = raw.decode("utf-8")
    except UnicodeDecodeError:
        token = "bytes:" + "".join(f"\\x{b:02x}" for b in raw)
    return {"token": token, "logprob": max(float(logprob), -9999.0), "bytes": list(raw)}


def token_bytes(tokenizer, token_ids: list[int]) -> list[bytes]:
    """The exact bytes of each token: byte-level BPE tokens (GPT-2 style, SmolLM2's) map back through the byte-to-
    character table; other tokenizers fall back to decoding each token alone (a partial character becomes U+FFFD)."""
    if not token_ids:
        return []
    decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
    if type(decoder).__name__ == "ByteLevel":
        table = _unicode_to_byte()
        tokens = tokenizer.convert_ids_to_tokens(list(token_ids))
        if all(c in table for t in tokens for c in t):
            return [bytes(table[c] for c in t) for t in tokens]
    return [tokenizer.decode([t], skip_special_tokens=False).encode("utf-8") for t in token_ids]


@functools.cache
def _unicode_to_byte() -> dict[str, int]:
    """GPT-2's byte → printable-character table (transformers' own), inverted."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {char: byte for byte, char in bytes_to_unicode().items()}


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
    logprobs: list[dict] | None = None,
) -> dict:
    """One `chat.completion.chunk` for choice `index` (with the `logprob_entries` of its tokens, when asked for).
    With include_usage every such chunk carries "usage": null (the usage itself comes in `usage_chunk`, as OpenAI
    does)."""
    lp = None if logprobs is None else {"content": logprobs, "refusal": None}
    chunk = {
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": fingerprint,
        "choices": [{"index": index, "delta": delta or {}, "logprobs": lp, "finish_reason": finish_reason}],
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
        lps = c.piece_logprobs or [None] * len(c.pieces or [])
        body += [chat_chunk(delta={"content": p}, index=i, logprobs=lp, **common)
                 for p, lp in zip(c.pieces or [], lps) if p]
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


def logprobs_by_piece(entries: list[dict], spans: list[tuple[str, int]]) -> list[list[dict]]:
    """The log-prob entries of the tokens each streamed piece completes (`spans`: (piece, end token index)); tokens
    after the last piece go with it."""
    out, start = [], 0
    for j, (_, end) in enumerate(spans):
        end = len(entries) if j == len(spans) - 1 else end
        out.append(entries[start:end])
        start = end
    return out


def piece_spans(tokenizer, token_ids: list[int], text: str) -> list[tuple[str, int]]:
    """Split `text` (the decoded reply) into one piece per token for streaming, each with the index just past the
    last token it completes; the pieces concatenate to `text`.

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
        pieces.append((piece, i))
        sent += len(piece)
    if sent < len(text):
        pieces.append((text[sent:], len(token_ids)))
    return pieces
