"""What is known about a policy version before and after it is served: the version gate's measures and decision,
and the per-version feedback rates. Driven by hsd_ray/loop/gatekeeper.py (the gate) and hsd_ray/loop/queue.py (the
rates).

The gate compares a candidate version with the last accepted one and with the base model on a fixed probe set
(hsd_ray/data/probes.json):
- per-token KL(candidate ‖ accepted) and KL(candidate ‖ base), on the accepted version's greedy replies to the probe
  prompts, from the top-k distributions the engines return (`topk_kl`: the candidate's top-k tokens plus one tail
  bucket; a token outside the other model's top-k gets that model's k-th log-prob, an upper bound, so the value is
  an estimate of the full KL, not a bound);
- perplexity of a reference text; accuracy on checkable prompts under a strict checker (`check_answer`);
- facts lost: plain fact questions (capitals, no "Answer in one word.") the base answers right and the candidate
  does not, in its first sentence or later in a longer reply (`fact_named_eventually`). Net accuracy let a version
  trade capitals for arithmetic in a shorter format: `make run` served a version that answered 6 of 12 plain capital
  questions where the base answered 10, at accuracy 0.45 against 0.55, on the bound (README); the benchmark's
  trained runs lost 1–9 of the base's 22 test capitals while every served version passed (bench/learning/README.md,
  "What the net capability number hides");
- the mean reply length on the probe prompts against the accepted version's;
- the share of probe replies that loop (`is_degenerate`) against the base model's: a learned style can keep
  accuracy, perplexity and KL in bounds while replies repeat themselves (seen in the learning benchmark, README);
- relevance: how much the candidate's greedy probe replies tell which probe they answer, against the base model's
  replies cut to the same number of words (`relevance_requests`, `relevance_change`). Loops, accuracy and KL all
  passed versions that had drifted into a chatty persona ("Give me a word that rhymes with light." → "Aw, wow. I'm
  sorry, but I'm not a word-guy."); their replies no longer carry their question;
- for a per-user adapter, the same share on that user's own latest prompts against the base model's replies to them:
  the shipped probes never invite what a user taught (an emoji adapter that answers its user with "🚀🚀🚀🚀🚀…"
  passed them), the user's own prompts do; opt-in, a shared candidate's loops and relevance on the latest prompts
  it trained on (its users' traffic), against the base model's replies to them;
- opt-in, what users see: the same loop share and relevance on replies *sampled* at the serving temperature (k
  per probe, fixed seeds that the base model's sampled replies were drawn with too). The greedy numbers follow what
  users see only loosely (over 46 gated benchmark results greedy probe loops tracked sampled loops at r = 0.31); on
  dev the sampled check cost more than it caught (docs/version_gate.md), so it is off by default;
- abuse: how many of all its greedy replies (probes, checkable prompts, a user's own prompts) swear at or insult the
  user (`core/abuse.is_abusive`) against the base model's count. Trained runs of the learning benchmark served
  versions that opened replies with "Dumbass, …" or "Oh no, you bastard." while every other check passed them;
- one answer: on balanced yes/no questions (half true), the share of its verdicts (`first_verdict`) that are its
  most common one. A constant "No" is right half the time on such a set, and was served: the per-user benchmark's
  yes/no adapters answered 90–98% of their user's questions "No" and every other check passed them (accuracy asks
  for numbers and names; bench/learning/README.md, "Per-user adapters at lr 5e-4: three seeds").
`gate_reasons` turns the numbers and the limits into the reasons a candidate is held back (none = accepted).

Not from the paper (arXiv 2603.12273): the paper trains offline and does not gate versions.

Pure: numpy and plain records only.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np

from hsd_ray.core.answers import check_number
from hsd_ray.core.engine_api import ScoreRequest

GATE_REASONS = ("kl_accepted", "kl_base", "perplexity", "accuracy", "facts", "length", "loops", "relevance",
                "sampled_loops", "sampled_relevance", "user_loops", "user_relevance", "abusive", "one_answer",
                "invalid")
RELEVANCE_QUERY = "\n\nThe question this answers: "  # read after a reply: how likely is the probe as its question
RATE_KINDS = ("complaint", "positive", "none")
_COMPLAINT_KINDS = ("correction", "complaint", "rephrase", "clarification", "unknown")
_WORD = re.compile(r"[a-z0-9]+")
_VERDICT = re.compile(r"\b(yes|no)\b")
_LOOP_WORD = re.compile(r"[a-z0-9']+")
_LIST_MARKER = re.compile(r"^\s*(?:[-*+•]|\d{1,3}[.)])\s*")
SYMBOL_RUN = 5  # three emojis in a row are a style ("🎉🎉🎉"); five of one kind were only ever a loop in the dev runs
# one pictographic symbol (the emoji blocks, misc. symbols and dingbats), then it again SYMBOL_RUN - 1 times, with
# whitespace, variation selectors and zero-width joiners allowed in between
_SYMBOL_RUN = re.compile(r"([\U0001F000-\U0001FAFF\u2600-\u27BF])(?:[\s\uFE0F\u200D]*\1){%d}" % (SYMBOL_RUN - 1))


# ---- the checkers ---------------------------------------------------------------------------------------------------


def is_degenerate(reply: str) -> bool:
    """The reply loops: a word 3-gram occurs three times, a line of three or more words appears twice (list markers
    aside), or one symbol (an emoji) comes `SYMBOL_RUN` times in a row. Word n-grams do not see symbols: on the dev
    split a per-user adapter for "more emojis" answered "Babies, you are the most adorable babies out there!
    🐩🐩🐩🐩🐩🐩🐩🐩🐩🐩" and the gate's loop check passed it (bench/learning/README.md, "Per-user adapters")."""
    if _SYMBOL_RUN.search(reply):
        return True
    w = _LOOP_WORD.findall(reply.lower())
    grams = Counter(zip(w, w[1:], w[2:]))
    if grams and max(grams.values()) >= 3:
        return True
    lines = [" ".join(_LOOP_WORD.findall(_LIST_MARKER.sub("", line.lower()))) for line in reply.splitlines()]
    counted = Counter(line for line in lines if len(line.split()) >= 3)
    return bool(counted) and max(counted.values()) >= 2


def loop_rate(replies: list[str]) -> float:
    return sum(map(is_degenerate, replies)) / max(len(replies), 1)


def check_answer(reply: str, answer: str, kind: str) -> bool:
    """Strict: kind "number" — the number the reply answers with is the answer (`answers.check_number`, the learning
    benchmark's reading: the first number, or c when it opens "a op b = c"; a later correct number does not count);
    kind "named" — the answer is a whole word among the first 12 words of the reply's first sentence
    (case-insensitive). No number, a wrong first number or a rambling first sentence is wrong.
    The gate read only the first number until 2026-12-03, so the base's correct "7 + 5 = 12" counted as wrong and a
    version that dropped the restated sum ("12") gained accuracy for a style: 8 of the base's 20 arithmetic probe
    replies are correct equations (bench/learning/README.md, "One reading of a numeric answer")."""
    if kind == "number":
        return check_number(reply, answer)
    if kind == "named":
        sentence = re.split(r"[.!?\n]", reply.strip().lower(), maxsplit=1)[0]
        words = _WORD.findall(sentence)
        return answer.lower() in words[:12]
    raise ValueError(f"unknown checkable kind {kind!r} (expected 'number' or 'named')")


def fact_named_eventually(reply: str, answer: str, claim_words: tuple[str, ...] = ("capital", "capitals")) -> bool:
    """A plain fact read over the whole reply, not its first sentence: right when a sentence names `answer` before
    any sentence states a claim (one of `claim_words`) without it. `check_answer` reads only the first sentence's
    first 12 words, so a version that opens with context counted as having forgotten: on the dev split, of the 46
    capitals listed as lost by per-user adapter candidates held back for facts, 36 had named no capital yet ("Cuba is
    a sovereign state located in the Caribbean, primarily in the South and"), the style every lists adapter learned;
    10 named a wrong one ("The capital of Iraq is Mosul."), which stays wrong here however much follows."""
    for sentence in re.split(r"[.!?\n]", reply.lower()):
        words = _WORD.findall(sentence)
        if answer.lower() in words:
            return True
        if any(w in words for w in claim_words):
            return False
    return False


def first_verdict(reply: str) -> str | None:
    """The yes/no a reply answers with: the first standalone "yes" or "no" of its first sentence, lowercased ("No, a
    square has eight sides." and "The answer to this question is yes, …" both answer); None when that sentence has
    neither. Not the first one anywhere: a long reply's later "there is no …" is not a verdict."""
    sentence = re.split(r"[.!?\n]", reply.strip().lower(), maxsplit=1)[0]
    m = _VERDICT.search(sentence)
    return m.group(1) if m else None


def one_answer_share(verdicts: list[str | None]) -> tuple[int, float]:
    """How many replies gave a verdict, and the share of those that gave the most common one (0.0 with none)."""
    given = [v for v in verdicts if v is not None]
    return len(given), (max(Counter(given).values()) / len(given) if given else 0.0)


def answers_one_way(verdicts: int, share: float, asked: int, max_share: float) -> bool:
    """A version gives one answer to nearly every yes/no question: a verdict on more than `max_share` of the `asked`,
    and its most common verdict on more than `max_share` of those. Not "on at least half": the base SmolLM2 gives
    14 verdicts of 24, 10 of them "No", and its few "yes" are knife-edge; on dev, adapters for other preferences
    tipped them to 14–16 "No" of 14–16 after 1–3 steps, and that bound held back 10 of 15 candidates
    (bench/learning/README.md, "A gate check that sees a constant answer")."""
    return asked > 0 and verdicts > max_share * asked + 1e-9 and share > max_share + 1e-9


def answer_margin(top_logprobs: list, right_at: list[bool]) -> float:
    """How firmly a greedy reply decides its right answer: the smallest probability margin of the chosen token over
    the runner-up (`top_logprobs`: per reply token, its top-2 (id, raw log-prob), best first) at any token up to the
    first one after which the reply answers right (`right_at[i]`: the reply cut after token i is right). 0.0 when it
    never does. The base SmolLM2's Uruguay is 0.013 ("The" over "El"), Ecuador 0.007: any small weight change flips
    such a fact, so losing it says nothing about a candidate (`python -m bench.learning.first_token`)."""
    end = next((i for i, ok in enumerate(right_at) if ok), None)
    if end is None:
        return 0.0
    return min(math.exp(row[0][1]) - math.exp(row[1][1]) for row in top_logprobs[: end + 1])


# ---- relevance: does a reply still tell which question it answers? --------------------------------------------------


def truncate_words(text: str, n: int) -> str:
    """`text` up to the end of its n-th whitespace-separated piece (its own spacing and newlines kept)."""
    ends = [m.end() for m in re.finditer(r"\S+", text)]
    return text if n >= len(ends) else text[: ends[n - 1]] if n > 0 else ""


def relevance_requests(tokenizer, pairs: list[tuple[str, str]]) -> list[ScoreRequest]:
    """(reply, question) → score the question's tokens after "reply + RELEVANCE_QUERY": the summed log-prob is
    log p(question | reply). Less the same with an empty reply, it is the PMI of question and reply."""
    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    return [ScoreRequest(ids(reply + RELEVANCE_QUERY), ids(question)) for reply, question in pairs]


def relevance_change(logp_own: list[float], logp_cut: list[float]) -> float:
    """Mean over the probes of log p(probe | candidate's reply) − log p(probe | base reply cut to as many words), in
    nats: the PMI difference (the prior log p(probe) cancels). 0 for the base itself; the cut keeps a shorter learned
    reply from counting as less relevant only because it says less."""
    return float(np.mean(np.subtract(logp_own, logp_cut))) if logp_own else 0.0


# ---- KL from top-k distributions -----------------------------------------------------------------------------------


def topk_kl(p_ids_T_K: np.ndarray, p_logp_T_K: np.ndarray, q_ids_T_K: np.ndarray, q_logp_T_K: np.ndarray,
            eps: float = 1e-6) -> np.ndarray:
    """Per-position KL(p ‖ q) [T] over p's top-k tokens plus one tail bucket (the rest of the vocabulary). q's
    log-prob of a token outside its own top-k is taken as q's k-th (smallest) top-k log-prob."""
    T = p_ids_T_K.shape[0]
    out = np.zeros(T, dtype=np.float64)
    for t in range(T):
        q_of = dict(zip(q_ids_T_K[t].tolist(), q_logp_T_K[t].tolist()))
        floor = float(np.min(q_logp_T_K[t]))
        p = np.exp(p_logp_T_K[t].astype(np.float64))
        q = np.exp(np.array([q_of.get(i, floor) for i in p_ids_T_K[t].tolist()], dtype=np.float64))
        if q.sum() > 1.0:
            q = q / q.sum() * (1.0 - eps)
        p_tail, q_tail = max(1.0 - p.sum(), eps), max(1.0 - q.sum(), eps)
        p, q = np.maximum(p, eps), np.maximum(q, eps)
        out[t] = float(np.sum(p * (np.log(p) - np.log(q))) + p_tail * (math.log(p_tail) - math.log(q_tail)))
    return np.maximum(out, 0.0)


def mean_kl(p_rows: list, q_rows: list) -> float:
    """Mean per-token KL(p ‖ q) over all positions of several replies; rows are (ids_T_K, logp_T_K) pairs."""
    values = [topk_kl(pi, pl, qi, ql) for (pi, pl), (qi, ql) in zip(p_rows, q_rows) if len(pi)]
    return float(np.concatenate(values).mean()) if values else float("nan")


def perplexity(logp_rows: list[np.ndarray]) -> float:
    """exp(mean negative log-likelihood per token) over the rows."""
    flat = np.concatenate([np.asarray(r, dtype=np.float64) for r in logp_rows]) if logp_rows else np.zeros(0)
    return float(math.exp(-flat.mean())) if flat.size else float("nan")


def topk_arrays(top_logprobs: list, k: int) -> tuple[np.ndarray, np.ndarray]:
    """A generation's per-position top log-probs ([(id, log-prob)] * k, best first) as (ids_T_K, logp_T_K), the
    shape `engine.score(..., top_k=k)` returns."""
    if top_logprobs is None or any(len(row) != k for row in top_logprobs):
        raise ValueError(f"the engine returned no top-{k} log-probs with the gate's probe replies")
    return (np.array([[i for i, _ in row] for row in top_logprobs], dtype=np.int64),
            np.array([[lp for _, lp in row] for row in top_logprobs], dtype=np.float32))


def probe_stats(replies) -> tuple[float, float]:
    """Mean reply length (tokens) and the share of looping replies of a version's greedy probe replies."""
    return sum(len(r.token_ids) for r in replies) / max(len(replies), 1), loop_rate([r.text for r in replies])


# ---- the decision --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GateLimits:
    """The thresholds of the version gate (config: `version_gate`)."""

    max_kl_accepted: float
    max_kl_base: float
    max_ppl_ratio: float
    max_accuracy_drop: float
    max_length_change: float
    max_loop_increase: float
    max_user_loop_increase: float = 0.125
    max_relevance_drop: float = math.inf
    max_facts_lost: float = math.inf  # a count: plain facts the base answers that the candidate may get wrong
    max_abusive: float = math.inf  # a count: greedy replies that swear or insult, beyond the base model's
    max_sampled_loop_increase: float = math.inf
    max_sampled_relevance_drop: float = math.inf
    max_user_relevance_drop: float = math.inf
    max_one_answer_share: float = math.inf  # of a version's yes/no verdicts, the most its commonest may take


@dataclass
class GateNumbers:
    """One candidate's measures. `*_base` and `length_accepted` are the references it is judged against."""

    kl_accepted: float | None  # None: not measured (a per-user adapter's candidate is not held to it: two scoring
    kl_base: float | None  # passes fewer, gatekeeper.evaluate)
    ppl: float
    ppl_base: float
    accuracy: float
    accuracy_base: float
    length: float
    length_accepted: float
    seconds: float = 0.0
    loops: float = 0.0  # share of the probe replies that loop
    loops_base: float = 0.0
    relevance: float | None = None  # relevance_change of its greedy probe replies (nats; the base: 0); None: not
    # measured (a per-user adapter's candidate is not held to it)
    user_prompts: int = 0  # how many of its users' own latest prompts it was tried on (0 = none): a per-user
    # adapter's user's, or the traffic a shared candidate trained on (version_gate.traffic_probes)
    user_loops: float = 0.0  # share of its greedy replies to them that loop
    user_loops_base: float = 0.0  # the base model's share on the same prompts
    user_relevance: float | None = None  # relevance_change of those replies against the base's (None: not measured)
    facts_lost: int = 0  # plain fact probes the base answers right and this candidate does not
    facts_base: int = 0  # of how many the base answers right
    facts_late: int = 0  # of those, how many it answers only later in a longer reply (not lost; fact_named_eventually)
    abusive: int = 0  # its greedy replies that swear at or insult the user (core/abuse.is_abusive)
    abusive_base: int = 0  # the base model's, on the same prompts
    yes_no: int = 0  # balanced yes/no questions asked (0 = not measured)
    verdicts: int = 0  # of those, how many its reply answered yes or no (first_verdict)
    one_answer: float = 0.0  # the share of its verdicts that are its most common one
    verdicts_base: int = 0  # the same of the base model
    one_answer_base: float = 0.0
    sampled: int = 0  # how many probe replies it sampled at the serving temperature (0 = not measured)
    sampled_loops: float = 0.0  # share of them that loop
    sampled_loops_base: float = 0.0  # the base model's share, drawn with the same seeds
    sampled_relevance: float | None = None  # relevance_change of the sampled replies against the base's sampled ones
    # the evidence behind `facts_lost` and `accuracy`: fact probes, then checkable prompts, the base answers right
    # and this candidate does not, with its reply (`lost_answers`); an operator reading a rejection sees what was
    # lost, not only a rate
    lost: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {k: (round(v, 5) if isinstance(v, float) and math.isfinite(v) else v) for k, v in asdict(self).items()}

    def summary(self) -> str:
        return ((f"KL(cand‖accepted) {self.kl_accepted:.4f} " if self.kl_accepted is not None else "")
                + (f"KL(cand‖base) {self.kl_base:.4f} " if self.kl_base is not None else "")
                + f"ppl {self.ppl:.3g} (base {self.ppl_base:.3g}) accuracy {self.accuracy:.3f} "
                f"(base {self.accuracy_base:.3f}) "
                + (f"facts lost {self.facts_lost} of {self.facts_base} " if self.facts_base else "")
                + (f"(answered late {self.facts_late}) " if self.facts_late else "")
                + f"length {self.length:.1f} (accepted {self.length_accepted:.1f}) "
                f"loops {self.loops:.2f} (base {self.loops_base:.2f})"
                + (f" abusive {self.abusive} (base {self.abusive_base})" if self.abusive or self.abusive_base else "")
                + (f" relevance {self.relevance:+.2f}" if self.relevance is not None else "")
                + (f" sampled loops {self.sampled_loops:.2f} (base {self.sampled_loops_base:.2f}, {self.sampled})"
                   if self.sampled else "")
                + (f" sampled relevance {self.sampled_relevance:+.2f}" if self.sampled_relevance is not None else "")
                + (f" user loops {self.user_loops:.2f} (base {self.user_loops_base:.2f}, {self.user_prompts} of the "
                   "user's prompts)" if self.user_prompts else "")
                + (f" user relevance {self.user_relevance:+.2f}" if self.user_relevance is not None else "")
                + (f" one answer {self.one_answer:.2f} of {self.verdicts} verdicts on {self.yes_no} yes/no (base "
                   f"{self.one_answer_base:.2f} of {self.verdicts_base})" if self.yes_no else "")
                + "".join(f" | lost {x['prompt']!r} -> {x['reply'][:60]!r}" for x in self.lost[:2]))


MAX_LOST = 6  # answers kept as evidence per candidate: enough to read what went wrong, small in versions.json


def lost_answers(questions: list[str], base_right: list[bool], right: list[bool], replies: list[str],
                 limit: int = MAX_LOST) -> list[dict]:
    """The first `limit` checkable prompts the base answered right and the candidate did not, with the candidate's
    reply (cut to 200 characters)."""
    lost = [{"prompt": q, "reply": r[:200]} for q, b, c, r in zip(questions, base_right, right, replies) if b and not c]
    return lost[:limit]


ALL_CHECKS = ("kl_accepted", "kl_base", "perplexity", "accuracy", "facts", "length", "loops", "relevance",
              "sampled_loops", "sampled_relevance", "user_loops", "user_relevance", "abusive", "one_answer")
# What a per-user adapter is held to (version_gate.user_adapters=capability): no damage to language, answers, facts
# or fluency, and no abuse of its user. Not its distance from the shared policy, its reply length or its step size:
# those are what a personal preference changes (a yes/no user's replies are a tenth as long), and a step-size bound
# on an adapter that trains on while its candidate waits would reject it over and over. Not relevance: "Yes."
# carries less of a probe than any cut of a base reply, and the threshold was chosen on shared-policy versions only.
# Not the sampled checks either (their cost per adapter, and their thresholds, were measured on the shared policy).
# One answer to every yes/no question is: a yes/no user wants a word, not the same word whatever the question.
CAPABILITY_CHECKS = ("perplexity", "accuracy", "facts", "loops", "user_loops", "abusive", "one_answer")


def gate_reasons(n: GateNumbers, limits: GateLimits, checks: tuple[str, ...] = ALL_CHECKS) -> list[str]:
    """Why the candidate is held back ([] = accept), among `checks`. A NaN number is a reason of its own
    ("invalid"), and so is a KL that `checks` hold the candidate to but was not measured."""
    numbers = (n.kl_accepted, n.kl_base, n.ppl, n.ppl_base, n.accuracy, n.accuracy_base, n.length, n.length_accepted)
    if any(x is not None and math.isnan(x) for x in numbers) or any(
            getattr(n, name) is None for name in ("kl_accepted", "kl_base") if name in checks):
        return ["invalid"]
    failed = {
        "kl_accepted": n.kl_accepted is not None and n.kl_accepted > limits.max_kl_accepted,
        "kl_base": n.kl_base is not None and n.kl_base > limits.max_kl_base,
        "perplexity": n.ppl > limits.max_ppl_ratio * n.ppl_base,
        "accuracy": n.accuracy_base - n.accuracy > limits.max_accuracy_drop + 1e-9,
        "facts": n.facts_lost > limits.max_facts_lost,
        "length": abs(n.length / max(n.length_accepted, 1.0) - 1.0) > limits.max_length_change,
        "loops": n.loops - n.loops_base > limits.max_loop_increase + 1e-9,
        "relevance": n.relevance is not None and -n.relevance > limits.max_relevance_drop + 1e-9,
        "sampled_loops": n.sampled > 0 and n.sampled_loops - n.sampled_loops_base > limits.max_sampled_loop_increase
        + 1e-9,
        "sampled_relevance": n.sampled_relevance is not None
        and -n.sampled_relevance > limits.max_sampled_relevance_drop + 1e-9,
        "user_loops": n.user_prompts > 0 and n.user_loops - n.user_loops_base > limits.max_user_loop_increase + 1e-9,
        "user_relevance": n.user_relevance is not None and -n.user_relevance > limits.max_user_relevance_drop + 1e-9,
        "abusive": n.abusive - n.abusive_base > limits.max_abusive,
        # held to the base only where the base does not answer one way itself (then a candidate's is no worse)
        "one_answer": answers_one_way(n.verdicts, n.one_answer, n.yes_no, limits.max_one_answer_share)
        and not answers_one_way(n.verdicts_base, n.one_answer_base, n.yes_no, limits.max_one_answer_share),
    }
    unknown = set(checks) - set(failed)
    if unknown:
        raise ValueError(f"unknown gate checks {sorted(unknown)}")
    return [name for name in ALL_CHECKS if name in checks and failed[name]]


def gate_cost(versions: list[dict], train_s: float, steps: int, every_steps: int) -> dict | None:
    """The gate's time per evaluated version against the learner's optimizer time per version at the publish cadence
    (`train_s` over `steps`, times `every_steps`): the cost the issue bounds by 0.25. None before anything was
    evaluated or trained."""
    seconds = [v["numbers"]["seconds"] for v in versions if (v.get("numbers") or {}).get("seconds")]
    if not seconds or steps <= 0 or train_s <= 0:
        return None
    gate_s, learner_s = sum(seconds) / len(seconds), train_s / steps * every_steps
    return {"versions_evaluated": len(seconds), "gate_s_per_version": round(gate_s, 2),
            "learner_s_per_version": round(learner_s, 2), "ratio": round(gate_s / learner_s, 3)}


# ---- per-version feedback rates ------------------------------------------------------------------------------------


def rate_kind(is_feedback: bool | None, kind: str | None) -> str:
    """How a reply was received, from the feedback gate's decision on its follow-up: "complaint" (a correction,
    complaint, redo or clarification request), "positive" (thanks) or "none" (no feedback on the reply)."""
    if not is_feedback:
        return "none"
    return "positive" if kind == "positive" else "complaint"


@dataclass
class VersionFeedback:
    """Counts of `rate_kind` per served policy version (-1 = unknown, e.g. logged data)."""

    counts: dict[int, dict[str, int]] = field(default_factory=dict)

    def add(self, version: int | None, kind: str, n: int = 1) -> None:
        row = self.counts.setdefault(-1 if version is None else int(version), {k: 0 for k in RATE_KINDS})
        row[kind] += n

    def rates(self) -> dict[int, dict]:
        """{version: {"turns": n, "complaint": share, "positive": share, "none": share, "counts": {...}}}."""
        out = {}
        for v, row in sorted(self.counts.items()):
            total = sum(row.values())
            out[v] = {"turns": total, **{k: round(row[k] / total, 4) if total else 0.0 for k in RATE_KINDS},
                      "counts": dict(row)}
        return out
