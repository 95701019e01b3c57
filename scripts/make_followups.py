"""Writes hsd_ray/data/followups.jsonl from the hand-written rows in scripts/followups/ (`python scripts/make_followups.py`).

Each row: {"id", "split", "prompt", "reply", "followup", "label", "kind", "lang"}. Splits are ~60/20/20, stratified by
kind: within each kind and wave, rows are ordered by sha1(id) and cut at 60% / 80%, so every split holds every kind and
the assignment is a deterministic function of the ids. A wave is a group of modules added together: a later wave is
split on its own, so adding it moves no earlier row between splits. Follow-up texts are unique (normalised), so splits
are disjoint by text as well as by id. Labelling rule for ambiguous cases: does the message say something about the
quality/content of the previous reply ("thanks, that's right" does; "ok" and "continue" do not; "?" is a clarification
request)."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from followups import (code_more, coding, extra, form_prefs, knowledge, life, multilingual, redo_requests,  # noqa: E402
                       same_verbs, short_long, writing)

from hsd_ray.core.feedback import FEEDBACK_KINDS, NOT_FEEDBACK_KINDS  # noqa: E402

OUT = ROOT / "hsd_ray" / "data" / "followups.jsonl"


WAVES = ((coding, life, knowledge, writing, multilingual, short_long, code_more, extra, form_prefs),  # 571 rows
         (redo_requests,),  # bare redo requests ("be more specific") and same-verb negatives
         (same_verbs,))  # the redo verbs on the reply and on something new


def rows() -> list[tuple[int, dict]]:
    """(wave, row) for every hand-written follow-up."""
    out, seen = [], {}
    for wave, module in ((w, m) for w, modules in enumerate(WAVES) for m in modules):
        for ctx_id, prompt, reply, followups in module.CONTEXTS:
            for i, item in enumerate(followups):
                text, kind, lang = (item + ("en",))[:3]
                assert kind in FEEDBACK_KINDS + NOT_FEEDBACK_KINDS, (ctx_id, text, kind)
                key = " ".join(text.lower().split())
                assert key not in seen, f"duplicate follow-up {text!r} in {ctx_id} and {seen[key]}"
                seen[key] = ctx_id
                out.append((wave, {"id": f"{ctx_id}-{i:02d}", "prompt": prompt, "reply": reply, "followup": text,
                            "label": "feedback" if kind in FEEDBACK_KINDS else "not_feedback", "kind": kind,
                            "lang": lang}))
    return out


def assign_splits(items: list[dict]) -> None:
    for kind in FEEDBACK_KINDS + NOT_FEEDBACK_KINDS:
        group = sorted((r for r in items if r["kind"] == kind),
                       key=lambda r: hashlib.sha1(r["id"].encode()).hexdigest())
        n = len(group)
        for j, r in enumerate(group):
            r["split"] = "train" if j < round(0.6 * n) else "dev" if j < round(0.8 * n) else "test"


def main() -> None:
    waves = rows()
    items = [r for _, r in waves]
    for wave in range(len(WAVES)):
        assign_splits([r for w, r in waves if w == wave])
    keys = ("id", "split", "prompt", "reply", "followup", "label", "kind", "lang")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        for r in items:
            f.write(json.dumps({k: r[k] for k in keys}, ensure_ascii=False) + "\n")
    print(f"wrote {len(items)} rows to {OUT}")


if __name__ == "__main__":
    main()
