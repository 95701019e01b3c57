"""Prompt rendering and the hindsight templates: the one place a chat prompt becomes token ids.

Used by the chat service (the prompt it generates from), the teacher (student, teacher and baseline contexts via
core.hindsight) and the diagnostics, so a scored prompt matches the served prompt token for token.

- `render_prompt`: the chat template with the generation prompt, message text tokenised with special tokens *split*
  (a user typing "<|im_end|>" gets plain text tokens, never a real control token), left-truncated.
- `hindsight_messages`: x with the follow-up appended to its last user message through a template (arXiv 2603.12273,
  "Hindsight context"); `HINDSIGHT_TEMPLATES` holds the authors' two wordings and `plain`.

Pure: a tokenizer and messages in, token ids out. No Ray, no torch.
"""

from __future__ import annotations

from hsd_ray.core.turns import Message

# The hindsight templates: the paper authors' two (METHOD.md) and `plain`; `{followup}` is the user's next message.
HINDSIGHT_TEMPLATES: dict[str, str] = {
    "offline": (
        "\n\n[HINDSIGHT CONTEXT]\nThe following is a user response to your previous, insufficient attempt. "
        "Improve your response to the user prompt.\nFuture User Message: {followup}"
    ),
    "online": (
        "\n\n=== HINDSIGHT CONTEXT ===\n[The following is a future user message. "
        "Use this to guide your answer to the user prompt.]\n{followup}"
    ),
    # Not the authors': the follow-up appended to the prompt as the user wrote it, no framing. A 135M model follows a
    # plainly stated request more often than a framed "hindsight context" (in-context ceiling, dev split: "<= 20
    # words" 44% vs online 35%, "a list" 46% vs 25%; bench/learning/README.md, "Defaults chosen on dev").
    "plain": "\n\n{followup}",
}
_SENTINEL = "\uE000HSD{}\uE001"  # private-use characters: never in real text, never merged by BPE with neighbours


def template_text(template: str) -> str:
    """A template name ('online', 'offline') → its text; any other string is a custom template (contains {followup})."""
    text = HINDSIGHT_TEMPLATES.get(template, template)
    if "{followup}" not in text:
        names = sorted(HINDSIGHT_TEMPLATES)
        raise ValueError(f"unknown hindsight template {template!r}: use one of {names} or a text with {{followup}}")
    return text


def hindsight_messages(context: list[Message], followup: str, template: str) -> list[Message]:
    """x with the follow-up appended, through `template` (contains "{followup}"), to the last user message."""
    idx = max((i for i, m in enumerate(context) if m["role"] == "user"), default=None)
    if idx is None:
        raise ValueError("context has no user message to attach the hindsight follow-up to")
    # str.replace, not str.format: follow-ups and custom templates may contain braces.
    block = template.replace("{followup}", followup)
    out = [dict(m) for m in context]
    out[idx]["content"] = out[idx]["content"] + block
    return out


def render_prompt(tokenizer, messages: list[Message], max_tokens: int | None = None) -> list[int]:
    """Chat template with the generation prompt → token ids, message text tokenised as plain text, left-truncated.

    The template is rendered with a sentinel in place of each message's text; the template's own pieces are tokenised
    normally (they contain the real control tokens) and each message text with special tokens split.
    """
    placeholders = [{"role": m["role"], "content": _SENTINEL.format(i)} for i, m in enumerate(messages)]
    rendered = tokenizer.apply_chat_template(placeholders, tokenize=False, add_generation_prompt=True)
    ids: list[int] = []
    rest = rendered
    for i, m in enumerate(messages):
        marker = _SENTINEL.format(i)
        head, found, rest = rest.partition(marker)
        if not found:
            raise ValueError(f"chat template dropped message {i}; cannot render it exactly")
        ids += encode_text(tokenizer, head, split_special=False)
        ids += encode_text(tokenizer, m["content"], split_special=True)
    ids += encode_text(tokenizer, rest, split_special=False)
    if max_tokens is not None and len(ids) > max_tokens:
        ids = ids[len(ids) - max_tokens :]
    return ids


def encode_text(tokenizer, text: str, split_special: bool) -> list[int]:
    if not text:
        return []
    return list(tokenizer(text, add_special_tokens=False, split_special_tokens=split_special)["input_ids"])


def reply_end_ids(model, tokenizer) -> list[int]:
    """Every id that ends a reply for this model: the tokenizer's EOS first, then the generation config's (a list on
    some models, e.g. end-of-turn and end-of-text); no duplicates."""
    ids = [tokenizer.eos_token_id, getattr(getattr(model, "generation_config", None), "eos_token_id", None)]
    flat = [i for x in ids for i in (x if isinstance(x, (list, tuple)) else [x]) if i is not None]
    return list(dict.fromkeys(int(i) for i in flat))
