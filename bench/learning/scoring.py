"""What an evaluation generates and how its replies are scored: pure functions, no Ray (used by `evaluate.Evaluator`
on the live loop, by `noise` on the base model, by `ceiling`).

- compliance: every open-prompt reply is checked against every open-prompt preference, every yes/no reply against
  `yes_no_only` (format);
- yes/no: next to the format, CORRECTNESS: `correct` = the reply's first standalone yes/no word is the true answer
  (format ignored), `good` = format-compliant AND correct (a bare "No" to a question whose answer is yes is not good),
  `said_yes` / `said_no` = fraction whose first yes/no word is yes / no (a learned "always no" shows here);
- capability: strict checkers (`facts`), greedy.
"""

from __future__ import annotations

from bench.learning.facts import first_yes_no
from bench.learning.preferences import Preference, count_words, yes_no_only
from bench.learning.prompts import PromptSets


def eval_requests(prompts: PromptSets, split: str, preferences: list[Preference], samples: int) -> list[tuple]:
    """(kind, prompt index, sample, prompt) for every evaluated reply, kinds in sorted order."""
    requests = []
    for kind in sorted({p.prompt_kind for p in preferences}):
        for j, prompt in enumerate(prompts.heldout(kind, split)):
            requests += [(kind, j, s, prompt) for s in range(samples)]
    return requests


def yes_no_metrics(questions: list[str], replies: list[str], truth: dict[str, bool]) -> dict:
    n = len(replies)
    said = [first_yes_no(r) for r in replies]
    right = [s == ("yes" if truth[q] else "no") for q, s in zip(questions, said)]
    fmt = [yes_no_only(r) for r in replies]
    by_truth = {}
    for t in (True, False):
        idx = [i for i, q in enumerate(questions) if truth[q] == t]
        by_truth["yes" if t else "no"] = sum(right[i] for i in idx) / len(idx) if idx else float("nan")
    return {"n": n, "format": sum(fmt) / max(1, n), "correct": sum(right) / max(1, n),
            "good": sum(f and r for f, r in zip(fmt, right)) / max(1, n),
            "said_yes": said.count("yes") / max(1, n), "said_no": said.count("no") / max(1, n),
            "correct_when_truth": by_truth, "truth_yes_frac": sum(truth[q] for q in questions) / max(1, n)}


def score_compliance(requests: list[tuple], replies: list[dict], preferences: list[Preference],
                     truth: dict[str, bool]) -> dict:
    """Compliance per preference, the yes/no metrics, words per open reply, and the replies themselves."""
    out: dict = {}
    compliance, counts = {}, {}
    for p in preferences:
        texts = [rep["text"] for req, rep in zip(requests, replies) if req[0] == p.prompt_kind]
        compliance[p.name] = sum(map(p.verify, texts)) / len(texts) if texts else float("nan")
        counts[p.name] = len(texts)
    out["compliance"], out["compliance_n"] = compliance, counts
    yn = [(req[3], rep["text"]) for req, rep in zip(requests, replies) if req[0] == "yes_no"]
    if yn:
        out["yes_no"] = yes_no_metrics([q for q, _ in yn], [t for _, t in yn], truth)
    open_texts = [rep for req, rep in zip(requests, replies) if req[0] == "open"]
    out["mean_words_open"] = sum(count_words(r["text"]) for r in open_texts) / max(1, len(open_texts))
    out["stopped_on_own_frac"] = sum(r["finish_reason"] == "stop" for r in replies) / max(1, len(replies))
    out["replies"] = [{"kind": q[0], "prompt": q[3], "sample": q[2], "text": r["text"]}
                      for q, r in zip(requests, replies)]
    return out


def score_capability(items: list, replies: list[dict]) -> dict:
    correct = [p.check(r["text"]) for p, r in zip(items, replies)]
    by_kind: dict[str, list[bool]] = {}
    for p, c in zip(items, correct):
        by_kind.setdefault(p.kind, []).append(c)
    return {
        "accuracy": sum(correct) / max(1, len(correct)),
        "n": len(correct),
        "by_kind": {k: sum(v) / len(v) for k, v in by_kind.items()},
        "answers": [{"question": p.question, "kind": p.kind, "reply": r["text"], "correct": c}
                    for p, r, c in zip(items, replies, correct)],
        "fingerprints": [r.get("fingerprint") for r in replies],
    }


def answer_changes(before: list[dict], after: list[dict], kind_of: dict[str, str] | None = None) -> dict:
    """Which of the checkable prompts `before` answered right `after` answers wrong (lost), and the reverse (gained):
    the net capability number nets the two out, so a model that forgot a fifth of its capitals while it learned to
    state sums first can score higher. Both lists are `score_capability` answers of the same prompts in the same
    order. `lost_by_kind` counts the lost ones by prompt kind (an answer's own "kind", else `kind_of[question]`)."""
    if [a["question"] for a in before] != [a["question"] for a in after]:
        raise ValueError("answer lists of different prompts: compare evaluations of the same split")
    lost = [a for a, b in zip(before, after) if a["correct"] and not b["correct"]]
    by_kind: dict[str, int] = {}
    for a in lost:
        kind = a.get("kind") or (kind_of or {}).get(a["question"], "?")
        by_kind[kind] = by_kind.get(kind, 0) + 1
    return {"right_before": sum(a["correct"] for a in before), "lost": len(lost),
            "gained": sum(not a["correct"] and b["correct"] for a, b in zip(before, after)),
            "lost_by_kind": dict(sorted(by_kind.items())), "lost_questions": [a["question"] for a in lost]}


def metric_values(ev: dict) -> dict[str, float]:
    """The flat metrics of one evaluation that the noise floor and the report compare: `compliance.<pref>`,
    `yes_no.correct`, `yes_no.good`, `yes_no.said_yes`, `capability`."""
    out = {f"compliance.{k}": v for k, v in ev["compliance"].items()}
    if "yes_no" in ev:
        out.update({f"yes_no.{k}": ev["yes_no"][k] for k in ("correct", "good", "said_yes")})
    if "capability" in ev:
        out["capability"] = ev["capability"]["accuracy"]
    return out


def metric_n(ev: dict) -> dict[str, int]:
    """The number of replies behind each metric of `metric_values`."""
    out = {f"compliance.{k}": v for k, v in ev["compliance_n"].items()}
    if "yes_no" in ev:
        out.update({f"yes_no.{k}": ev["yes_no"]["n"] for k in ("correct", "good", "said_yes")})
    if "capability" in ev:
        out["capability"] = ev["capability"]["n"]
    return out


def run_suite(generate, prompts: PromptSets, split: str, preferences: list[Preference], *, samples: int,
              temperature: float, max_tokens: int, capability_max_tokens: int, seed: int = 0) -> dict:
    """Compliance (sampled, `seed`) and capability (greedy) with `generate(prompts, temperature, max_tokens, seed)
    -> [{"text", "finish_reason", "fingerprint"}]`: one batched call for each."""
    requests = eval_requests(prompts, split, preferences, samples)
    replies = generate([r[3] for r in requests], temperature, max_tokens, seed)
    out = score_compliance(requests, replies, preferences, prompts.yes_no_truth(split))
    items = list(prompts.capability(split))
    out["capability"] = score_capability(items, generate([p.question for p in items], 0.0, capability_max_tokens, 0))
    return out
