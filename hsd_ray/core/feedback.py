"""The feedback gate: is a user's follow-up o feedback on the reply y, and how much should the turn weigh?

Owned here: the follow-up kinds, `FeedbackDecision`, the gates (`NoGate`, `RuleGate`, `LinearGate`, `EnsembleGate`),
the hashed features of the learned gate, the default per-kind loss weights, and `make_gate`. The teacher calls
`gate.decide(prompt, reply, followup)` on every turn of each leased batch *before* scoring it; turns that are not
feedback get weight 0 (no teacher pass, no update), the rest are scaled by their kind's weight in the learner loss;
feedback of a kind weighted 0 (`feedback.kind_weights`) is dropped before scoring as well (`FeedbackDecision.trains`).

Why: the paper (arXiv 2603.12273) trains on every (reply, next message) pair and its offline template calls every next
message a response to an "insufficient attempt", so a topic change is distilled as criticism (measured harmful at
135M, see METHOD.md). Related work this follows:
- Don-Yehiya et al., naturally occurring feedback (arXiv 2407.10944): taxonomy repeat/rephrase, make aware with
  correction, make aware without correction, ask for clarification, positive, plus no feedback. Our feedback kinds map
  onto it: rephrase, correction, complaint, clarification, positive. They use an LLM extractor; we use rules plus a
  small logistic regression because a 135M judge scored ROC AUC 0.58 here.
- WildFeedback (satisfied / dissatisfied turn labels) and ReSpect (positive / neutral / negative decoded from the next
  message): positive feedback is kept, at a lower default weight.
- SDPO (arXiv 2601.20802) in TRL / verl zeroes the loss of samples without a teacher context: `weight == 0` is that mask.
Deviation: the not-feedback side is split into kinds of our own (new_topic, unrelated_question, small_talk, build_on),
because "build on the answer" requests ("now translate it") are the hard negatives a pivot detector must get right.

Pure: stdlib + numpy; no I/O (shipped weights are loaded by `hsd_ray.data.load_feedback_gate`).
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass

import numpy as np

from hsd_ray.core.feedback_rules import WHY_WHAT_RX, has_code, match_rules, normalise

FEEDBACK_KINDS = ("correction", "complaint", "rephrase", "clarification", "positive")
"""correction: says the reply is wrong and gives the fix; complaint: says it is wrong/bad without a fix (too long,
ignored an instruction, "are you sure?"); rephrase: asks to redo/change the reply itself (shorter, simpler, try again);
clarification: the reply was unclear ("what do you mean by X?", "?"); positive: praise/thanks for the reply."""
NOT_FEEDBACK_KINDS = ("new_topic", "unrelated_question", "small_talk", "build_on")
"""new_topic: a new task/subject; unrelated_question: a question not about the reply; small_talk: greetings, chit-chat,
bare acknowledgements ("ok", "k"); build_on: uses the reply as a base for something new without judging it ("now
translate it", "what about Germany?", "continue", "more")."""
UNKNOWN_KIND = "unknown"

DEFAULT_KIND_WEIGHTS: dict[str, float] = {
    "correction": 1.0, "complaint": 1.0, "rephrase": 1.0, "clarification": 0.5, "positive": 0.5, UNKNOWN_KIND: 1.0,
}
"""Loss multiplier per feedback kind. Clarification and positive carry less information about *how* the reply should
change (ReSpect found positive useful, so it is kept, at half weight). "unknown" (the learned gate fired but no rule
names a kind) keeps today's weight 1. Not-feedback kinds always weigh 0. Callers pass their own table."""


@dataclass(frozen=True)
class FeedbackDecision:
    """What a gate decided for one turn: `score` = its probability/score that o is feedback, `weight` in [0, 1] = the
    learner's loss multiplier (0 when not feedback), `reason` = a short machine-readable reason."""

    is_feedback: bool
    kind: str
    weight: float
    score: float
    reason: str

    @property
    def trains(self) -> bool:
        """Worth a teacher pass and a learner slot: feedback whose kind weighs more than 0. A weight-0 turn kept in a
        batch would add nothing to the loss but still count in its denominator, shrinking the other turns' step."""
        return self.is_feedback and self.weight > 0


def _decision(is_fb: bool, kind: str, score: float, reason: str, kind_weights: dict[str, float]) -> FeedbackDecision:
    weight = float(kind_weights.get(kind, kind_weights.get(UNKNOWN_KIND, 1.0))) if is_fb else 0.0
    return FeedbackDecision(is_fb, kind, min(max(weight, 0.0), 1.0), float(score), reason)


class NoGate:
    """Today's behaviour: every follow-up is feedback of unknown kind, weight 1."""

    def decide(self, prompt: str, reply: str, followup: str) -> FeedbackDecision:
        return FeedbackDecision(True, UNKNOWN_KIND, 1.0, 1.0, "none")


_TOKEN = re.compile(r"\w+", re.UNICODE)
_STOP = frozenset("""a an the and or but if so to of in on at for with by from is are was were be been it its this that these
those i you he she we they me my your our their do does did can could would should will what which who how why when where
there here not no yes please just also now then than as about into up out more some any all""".split())


def content_tokens(text: str) -> set[str]:
    """Lower-cased word tokens minus a small English stop list (CJK runs split into character bigrams)."""
    out: set[str] = set()
    for tok in _TOKEN.findall(text.lower()):
        if re.match(r"[\u4e00-\u9fff]", tok):
            out.update(tok[i:i + 2] for i in range(max(len(tok) - 1, 1)))
        elif tok not in _STOP and len(tok) > 1:
            out.add(tok)
    return out


def overlap(followup: str, other: str) -> float:
    """Fraction of the follow-up's content tokens that also occur in `other` (0 when the follow-up has none)."""
    f = content_tokens(followup)
    return len(f & content_tokens(other)) / len(f) if f else 0.0


class RuleGate:
    """High-precision lexical rules (`feedback_rules`); when none fires, not feedback, scored by lexical overlap with
    the reply/prompt (a related follow-up is likelier feedback than an unrelated one)."""

    def __init__(self, kind_weights: dict[str, float] | None = None):
        self.kind_weights = dict(DEFAULT_KIND_WEIGHTS if kind_weights is None else kind_weights)

    def decide(self, prompt: str, reply: str, followup: str) -> FeedbackDecision:
        hit = match_rules(followup)
        if hit is not None:
            kind, conf, name = hit
            return _decision(kind in FEEDBACK_KINDS, kind, conf, name, self.kind_weights)
        ov_reply = overlap(followup, reply)
        if ov_reply >= 0.6 and WHY_WHAT_RX.search(normalise(followup)) and len(followup.split()) <= 12:
            # a short why/what question about terms the reply itself used: the reply left them unexplained
            return _decision(True, "clarification", 0.7, "rule:about_reply", self.kind_weights)
        ov = max(ov_reply, overlap(followup, prompt))
        kind = "build_on" if ov >= 0.3 else "new_topic"
        return _decision(False, kind, 0.2 + 0.3 * min(ov, 1.0), f"overlap:{ov:.2f}", self.kind_weights)


def _hash(name: str, dim: int) -> int:
    return zlib.crc32(name.encode("utf-8")) % dim


def feature_dict(prompt: str, reply: str, followup: str, char_ngrams: tuple[int, int] = (2, 4)) -> dict[str, float]:
    """Named features of one turn: follow-up word uni/bigrams, first words, char n-grams inside words (each group L2
    normalised), and relational features (overlap with reply/prompt, length, question mark, code, rule hit)."""
    norm = normalise(followup)
    words = _TOKEN.findall(norm)
    feats: dict[str, float] = {}
    grams = [f"w:{w}" for w in words] + [f"b:{a}_{b}" for a, b in zip(words, words[1:])]
    grams += [f"f:{w}" for w in words[:1]] + [f"f2:{'_'.join(words[:2])}"] if words else []
    chars = [f"c:{t[i:i + n]}" for w in words for t in [f" {w} "]
             for n in range(char_ngrams[0], char_ngrams[1] + 1) for i in range(len(t) - n + 1)]
    for group in (grams, chars):
        if group:
            scale = 1.0 / math.sqrt(len(group))
            for g in group:
                feats[g] = feats.get(g, 0.0) + scale
    n_words = len(followup.split())
    hit = match_rules(followup)
    feats.update({
        "rel:ov_reply": overlap(followup, reply), "rel:ov_prompt": overlap(followup, prompt),
        "rel:log_len": math.log1p(n_words) / 3.0, "rel:short": float(n_words <= 3), "rel:long": float(n_words > 60),
        "rel:question": float(followup.rstrip().endswith(("?", "？"))), "rel:code": float(has_code(followup)),
        f"rel:rule={hit[0] if hit else 'none'}": 1.0, "rel:rule_conf": hit[1] if hit else 0.3,
    })
    return feats


def hashed(feats: dict[str, float], dim: int) -> dict[int, float]:
    """Feature names hashed (crc32, stable across processes) into `dim` buckets; colliding values add."""
    out: dict[int, float] = {}
    for name, v in feats.items():
        j = _hash(name, dim)
        out[j] = out.get(j, 0.0) + v
    return out


def featurize_matrix(rows: list[tuple[str, str, str]], dim: int) -> np.ndarray:
    """Dense float64 [N, dim] design matrix for (prompt, reply, followup) rows (what the fitter trains on)."""
    x_N_D = np.zeros((len(rows), dim), dtype=np.float64)
    for i, (p, r, f) in enumerate(rows):
        for j, v in hashed(feature_dict(p, r, f), dim).items():
            x_N_D[i, j] = v
    return x_N_D


def _kind_for(hit: tuple[str, float, str] | None, is_fb: bool) -> str:
    """A rule's kind when it agrees with the decision's side, else a generic kind for that side."""
    if hit is not None and (hit[0] in FEEDBACK_KINDS) == is_fb:
        return hit[0]
    return UNKNOWN_KIND if is_fb else "unrelated_question"


class LinearGate:
    """Logistic regression over hashed features; `score` = P(feedback); feedback when score >= threshold."""

    def __init__(self, weights_D: np.ndarray, bias: float, threshold: float = 0.5,
                 kind_weights: dict[str, float] | None = None, meta: dict | None = None):
        self.weights_D = np.asarray(weights_D, dtype=np.float64)
        self.bias, self.threshold = float(bias), float(threshold)
        self.kind_weights = dict(DEFAULT_KIND_WEIGHTS if kind_weights is None else kind_weights)
        self.meta = dict(meta or {})

    @property
    def dim(self) -> int:
        return int(self.weights_D.shape[0])

    def score(self, prompt: str, reply: str, followup: str) -> float:
        z = self.bias + sum(self.weights_D[j] * v for j, v in hashed(feature_dict(prompt, reply, followup), self.dim).items())
        return float(1.0 / (1.0 + math.exp(-max(min(z, 40.0), -40.0))))

    def decide(self, prompt: str, reply: str, followup: str) -> FeedbackDecision:
        p = self.score(prompt, reply, followup)
        is_fb = p >= self.threshold
        return _decision(is_fb, _kind_for(match_rules(followup), is_fb), p, f"learned:p={p:.2f}", self.kind_weights)

    def to_dict(self) -> dict:
        """Plain JSON-able dict: sparse non-zero weights keyed by bucket index (as strings)."""
        nz = np.flatnonzero(self.weights_D)
        return {"format": "hsd-feedback-linear-v1", "dim": self.dim, "bias": self.bias, "threshold": self.threshold,
                "weights": {str(int(j)): float(self.weights_D[j]) for j in nz}, "meta": self.meta}

    @classmethod
    def from_dict(cls, d: dict, kind_weights: dict[str, float] | None = None) -> "LinearGate":
        w_D = np.zeros(int(d["dim"]), dtype=np.float64)
        for j, v in d["weights"].items():
            w_D[int(j)] = float(v)
        return cls(w_D, d["bias"], d.get("threshold", 0.5), kind_weights, d.get("meta"))


class EnsembleGate:
    """score = rule_weight · RuleGate score + (1 − rule_weight) · LinearGate P(feedback); feedback when >= threshold.
    A firing rule (confidence near 0 or 1) moves the score by up to ±rule_weight/2 around the learned one."""

    def __init__(self, learned: LinearGate, threshold: float = 0.5, rule_weight: float = 0.5,
                 kind_weights: dict[str, float] | None = None):
        self.learned, self.rules = learned, RuleGate(kind_weights)
        self.threshold, self.rule_weight = float(threshold), float(rule_weight)
        self.kind_weights = self.rules.kind_weights

    def decide(self, prompt: str, reply: str, followup: str) -> FeedbackDecision:
        r = self.rules.decide(prompt, reply, followup)
        p = self.learned.score(prompt, reply, followup)
        s = self.rule_weight * r.score + (1.0 - self.rule_weight) * p
        is_fb = s >= self.threshold
        kind = r.kind if r.is_feedback == is_fb else _kind_for(None, is_fb)
        return _decision(is_fb, kind, s, f"ensemble:{r.reason}:p={p:.2f}", self.kind_weights)


GATE_KINDS = ("none", "rules", "learned", "ensemble")


def make_gate(kind: str, learned_weights: dict | None = None, threshold: float | None = None,
              kind_weights: dict[str, float] | None = None):
    """A gate by name. "learned"/"ensemble" need `learned_weights` (a `LinearGate.to_dict()`, e.g. the shipped
    `hsd_ray/data/feedback_gate.json`); `threshold` overrides the stored one (the ensemble's is stored under
    meta["ensemble"] together with its rule_weight)."""
    if kind == "none":
        return NoGate()
    if kind == "rules":
        return RuleGate(kind_weights)
    if kind not in GATE_KINDS:
        raise ValueError(f"unknown gate kind {kind!r}; expected one of {GATE_KINDS}")
    if learned_weights is None:
        raise ValueError(f"gate {kind!r} needs learned_weights (LinearGate.to_dict())")
    learned = LinearGate.from_dict(learned_weights, kind_weights)
    if kind == "learned":
        if threshold is not None:
            learned.threshold = float(threshold)
        return learned
    ens = dict(learned.meta.get("ensemble", {}))
    return EnsembleGate(learned, threshold if threshold is not None else ens.get("threshold", 0.5),
                        ens.get("rule_weight", 0.5), kind_weights)
