"""`Turn`: the one record that travels from capture to the learner, and where turns come from.

A turn is (x, y, o): the context messages x, the model's reply y, and the user's next message o (the implicit feedback).
Capture (live traffic) and the logged-data readers both produce Turns; the teacher adds `scores`; the learner consumes
them. The record gains fields along the way instead of being re-packed at each hop. Every turn carries the user id and
the adapter id it trains, so a user's data can later be found (and deleted) wherever it sits.

Pure: no Ray, no torch. Readers for JSONL and Parquet (pyarrow, imported lazily) in the OpenAI-messages, ShareGPT
and WildChat layouts; a malformed record is skipped and reported, never the end of a read.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from hsd_ray.core.feedback import FeedbackDecision
from hsd_ray.core.weights import BASE_ADAPTER

Message = dict[str, str]  # {"role": "system"|"user"|"assistant", "content": str}
VALID_ROLES = ("system", "developer", "user", "assistant")  # developer = system (OpenAI renamed it)


@dataclass
class TurnScores:
    """What a teacher computed for one turn; arrays are per scored reply token (T = len(TurnScores.target_ids_T)).

    `teacher_logp_T`: log π(y_i | x, o, y_<i); `baseline_logp_T`: log-prob of y_i under the baseline context (the plain
    student context, or the hindsight context with the reference follow-up); top-k arrays are the teacher's k most
    likely tokens at each position (for the distribution loss), or None when not requested.
    """

    student_prompt_ids: np.ndarray  # int64 [P]: the student context the learner differentiates through
    target_ids_T: np.ndarray  # int64 [T]: the reply tokens that were scored (EOS included when the reply finished)
    teacher_logp_T: np.ndarray  # float32 [T]
    baseline_logp_T: np.ndarray | None = None  # float32 [T]
    teacher_topk_ids_T_K: np.ndarray | None = None  # int64 [T, K]
    teacher_topk_logp_T_K: np.ndarray | None = None  # float32 [T, K]
    baseline_topk_logp_T_K: np.ndarray | None = None  # float32 [T, K]: the baseline's log-prob of the teacher's top-k
    teacher_version: int = 0  # policy version of the weights that scored
    teacher_prompt_tokens: int = 0
    baseline_prompt_tokens: int = 0
    served_reply: bool = True  # False: the target is the teacher's own reply (hindsight.teacher_reply_tokens), so
    # the turn's serving-time log-probs (importance weights) belong to another reply


@dataclass
class Turn:
    """One (x, y, o) training example plus who and which policy produced it."""

    context: list[Message]  # x: messages before the reply, starting with a user (or system) message
    reply: str  # y as text
    followup: str  # o: the user's next message
    user_id: str = "anonymous"
    adapter_id: str = BASE_ADAPTER  # which weight set this turn trains (per-user LoRA later)
    reply_token_ids: list[int] | None = None  # exact ids the policy sampled (None for logged data)
    reply_logprobs: list[float] | None = None  # log-probs of those ids at serving time (for importance weights)
    reply_finished: bool = True  # the reply ended on its own (EOS), not cut by max_tokens
    policy_version: int | None = None  # version that produced y (None for logged data)
    replied_at: float = field(default_factory=time.time)
    followup_at: float = field(default_factory=time.time)
    source: str = "live"  # "live" | "logged"
    turn_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    scores: TurnScores | None = None
    feedback: FeedbackDecision | None = None  # the feedback gate's decision (teacher), before scoring

    def feedback_weight(self) -> float:
        """The loss weight the feedback gate gave this turn (1.0 when no gate has decided)."""
        return 1.0 if self.feedback is None else self.feedback.weight

    def last_user_message(self) -> str:
        """The user message the reply answered (what the feedback gate compares the follow-up with)."""
        return next((m["content"] for m in reversed(self.context) if m["role"] == "user"), "")

    def is_scorable(self) -> bool:
        """A turn can be scored in hindsight (and so trained on) when its context has a user message to attach the
        follow-up to and the reply is not empty. The one place this rule lives: readers, teachers and the learner ask
        the turn."""
        return any(m["role"] == "user" for m in self.context) and bool(self.reply_token_ids or self.reply)


class TurnFormatError(ValueError):
    """A conversation or logged record is not valid OpenAI-style messages; the message says what is wrong."""


def validate_messages(messages: Any, where: str = "messages") -> list[Message]:
    """Check OpenAI-style messages and return them as plain {"role", "content"} dicts (content as text)."""
    if not isinstance(messages, list) or not messages:
        raise TurnFormatError(f"{where} must be a non-empty list")
    out: list[Message] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise TurnFormatError(f"{where}[{i}] must be an object")
        role = m.get("role")
        if role not in VALID_ROLES:
            raise TurnFormatError(f"{where}[{i}].role must be one of {VALID_ROLES}, got {role!r}")
        if m.get("content") is None and role != "assistant":  # only an assistant's content may be null (OpenAI)
            raise TurnFormatError(f"{where}[{i}].content is required for role {role!r} (a string or text parts)")
        role = "system" if role == "developer" else role  # OpenAI's newer name for the system message
        out.append({"role": role, "content": content_text(m.get("content"), f"{where}[{i}].content")})
    return out


def content_text(content: Any, where: str = "content") -> str:
    """OpenAI content is a string or a list of parts; only text parts are supported. The text must be valid Unicode
    (JSON can carry a lone surrogate such as "\\ud800", which no tokenizer accepts)."""
    if content is None:
        return ""
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise TurnFormatError(f"{where}[{j}] must be a text part ({{'type': 'text', 'text': ...}})")
            texts.append(part["text"])
        content = "".join(texts)
    if not isinstance(content, str):
        raise TurnFormatError(f"{where} must be a string or a list of text parts")
    if not is_valid_text(content):
        raise TurnFormatError(f"{where} is not valid Unicode (it contains a lone surrogate)")
    return content


def is_valid_text(text: str) -> bool:
    """True when `text` encodes to UTF-8 (no lone surrogates)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def trim_context(messages: list[Message], max_messages: int) -> list[Message]:
    """x = the last `max_messages` messages, moved forward until it starts with a user turn.

    A leading system message is kept (it is part of the deployment, not of the conversation window).
    """
    system = [m for m in messages[:1] if m["role"] == "system"]
    rest = messages[len(system) :]
    window = rest[-max_messages:]
    while window and window[0]["role"] != "user":
        window = window[1:]
    return system + window


def turns_from_conversation(
    messages: list[Message], *, user_id: str = "anonymous", max_context_messages: int = 5, source: str = "logged"
) -> list[Turn]:
    """Every assistant reply followed by a user message is a turn (x = up to the last N messages before the reply)."""
    messages = validate_messages(messages)
    turns = []
    for i in range(1, len(messages) - 1):
        if messages[i]["role"] == "assistant" and messages[i + 1]["role"] == "user":
            turn = Turn(
                context=trim_context(messages[:i], max_context_messages),
                reply=messages[i]["content"],
                followup=messages[i + 1]["content"],
                user_id=user_id,
                source=source,
            )
            if turn.is_scorable():  # a reply with no user message before it has no prompt to learn from
                turns.append(turn)
    return turns


def reply_key(user_id: str, context: list[Message], reply: str) -> str:
    """Content hash identifying a served reply: the same user, the same messages before it and the same text.

    Used by capture to recognise that a request continues a reply this service produced (on any replica). A client
    that edits the assistant message produces a different key and is not treated as our reply.
    """
    canon = json.dumps([user_id, [[m["role"], m["content"]] for m in context], reply], ensure_ascii=False)
    return hashlib.sha256(canon.encode()).hexdigest()


# ---- logged data readers -----------------------------------------------------------------------------------------

# ShareGPT speaker names → OpenAI roles (the dumps use several spellings)
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "chatgpt": "assistant", "assistant": "assistant",
                  "bard": "assistant", "bing": "assistant", "model": "assistant", "system": "system"}


@dataclass
class ReadReport:
    """What a reader skipped: malformed records with their location and reason, and records a filter dropped."""

    records: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (where: "file:line" or "file: row n", why)
    filtered: dict[str, int] = field(default_factory=dict)  # filter name → records dropped

    def summary(self, show: int = 5) -> str:
        first = "; ".join(f"{w}: {why}" for w, why in self.skipped[:show])
        return (f"{self.records} records, {len(self.skipped)} malformed skipped{' (' + first + ')' if first else ''}, "
                f"filtered {self.filtered or 'none'}")


def read_conversations(path: str | Path, *, language: str | None = None, drop_toxic: bool = False,
                       report: ReadReport | None = None) -> Iterator[tuple[str, list[Message]]]:
    """Yield (user_id, messages) from JSONL or Parquet records in any of three layouts:

    - OpenAI: "messages" = [{role, content}] (and optional "user");
    - ShareGPT: "conversations" = [{from: human|gpt|system, value}];
    - WildChat: "conversation" = [{role, content, ...}], with "language" and "toxic" (and "hashed_ip" as the user).

    A malformed record is skipped and noted in `report` with its line (or row) and the reason; it never ends the
    read. Filters (counted in `report.filtered`): `language` keeps records whose "language" equals it
    (case-insensitive; a record without one is dropped), `drop_toxic` drops records marked "toxic"."""
    path = Path(path)
    report = report if report is not None else ReadReport()
    if not path.exists():
        raise FileNotFoundError(f"source file not found: {path}")
    if path.suffix not in (".jsonl", ".parquet"):
        raise TurnFormatError(f"source {path}: unsupported format (use .jsonl or .parquet)")
    records = _jsonl_records(path) if path.suffix == ".jsonl" else _parquet_records(path)
    for where, record in records:
        report.records += 1
        try:
            if isinstance(record, TurnFormatError):
                raise record
            if not isinstance(record, dict):
                raise TurnFormatError("not a JSON object")
            dropped_by = _filtered_by(record, language, drop_toxic)
            if dropped_by:
                report.filtered[dropped_by] = report.filtered.get(dropped_by, 0) + 1
                continue
            user, messages = _conversation(record)
        except TurnFormatError as e:
            report.skipped.append((where, str(e)))
            continue
        yield user, messages


def _jsonl_records(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open(encoding="utf-8", errors="surrogateescape") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield f"{path}:{lineno}", json.loads(line)
            except (json.JSONDecodeError, RecursionError) as e:
                yield f"{path}:{lineno}", TurnFormatError(f"not JSON ({getattr(e, 'msg', type(e).__name__)})")


def _parquet_records(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    for row, record in enumerate(pq.read_table(path).to_pylist()):
        for key in ("messages", "conversations", "conversation"):
            if isinstance(record.get(key), str):  # a JSON string column
                try:
                    record[key] = json.loads(record[key])
                except json.JSONDecodeError:
                    record = TurnFormatError(f"{key} is not JSON")
                    break
        yield f"{path}: row {row}", record


def _filtered_by(record: dict, language: str | None, drop_toxic: bool) -> str | None:
    if language is not None and str(record.get("language") or "").lower() != language.lower():
        return "language"
    if drop_toxic and bool(record.get("toxic")):
        return "toxic"
    return None


def _conversation(record: dict) -> tuple[str, list[Message]]:
    """One record of any supported layout → (user_id, validated OpenAI messages)."""
    user = str(record.get("user") or record.get("hashed_ip") or "anonymous")
    if "messages" in record:
        return user, validate_messages(record["messages"], "messages")
    if "conversation" in record:
        return user, validate_messages(record["conversation"], "conversation")
    if "conversations" in record:
        turns = record["conversations"]
        if not isinstance(turns, list):
            raise TurnFormatError("conversations must be a list")
        messages = []
        for j, m in enumerate(turns):
            speaker = m.get("from") if isinstance(m, dict) else None
            if speaker not in SHAREGPT_ROLES:
                raise TurnFormatError(f"conversations[{j}].from must be one of {sorted(SHAREGPT_ROLES)}")
            messages.append({"role": SHAREGPT_ROLES[speaker], "content": m.get("value")})
        return user, validate_messages(messages, "conversations")
    raise TurnFormatError("expected 'messages', 'conversations' (ShareGPT) or 'conversation' (WildChat)")


def turns_from_source(path: str | Path, max_context_messages: int = 5, *, language: str | None = None,
                      drop_toxic: bool = False, report: ReadReport | None = None) -> Iterable[Turn]:
    for user_id, messages in read_conversations(path, language=language, drop_toxic=drop_toxic, report=report):
        yield from turns_from_conversation(messages, user_id=user_id, max_context_messages=max_context_messages)
