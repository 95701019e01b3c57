"""Hand-written follow-up rows, grouped by topic. Each module exposes CONTEXTS: a list of
(context_id, prompt, reply, [(followup, kind) or (followup, kind, lang), ...]); assembled by scripts/make_followups.py."""
