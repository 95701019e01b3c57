"""Greedy replies that start from another version's greedy replies: check them in one scoring pass, and generate
only from where the loaded weights would first choose differently.

Why: the version gate (loop/gatekeeper.py) measures every candidate on greedy replies to fixed prompt sets, and
generating them token by token was most of its cost (bench/bench_gate.py: ~12 of ~13 s per SmolLM2 candidate on 2
CPU cores). A candidate one learner version away from the last accepted one mostly answers as that version did. One
teacher-forced pass over the accepted version's replies gives the candidate's argmax at every position; its greedy
reply is the accepted reply up to the first position where that argmax differs, then the argmax there, then its own
greedy continuation from that point. It is the verification step of speculative decoding (Leviathan et al., 2023,
arXiv 2211.17192) with the previous version as the draft model, applied once per reply; for the probe replies the
gate scores the accepted replies anyway (the KL), so their check costs nothing extra.

Exactness: the result is the loaded weights' greedy reply up to floating-point differences between a teacher-forced
pass and step-by-step decoding (the same kind as between batched and one-prompt generation), which can flip an argmax
at a near-tie; bench/bench_gate.py counts replies token-identical to plain greedy generation.

Owned here: `Draft`, `draft_target`, `agreement` (pure, tested exactly) and `greedy_from_drafts` (drives any Engine).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hsd_ray.core.engine_api import Generation, SamplingParams, ScoreRequest, TokenScores


@dataclass(frozen=True)
class Draft:
    """A version's greedy reply to one prompt: its ids (the end-of-turn token excluded, as in `Generation`) and
    whether it ended on EOS (else it ran to max_tokens)."""

    reply_ids: tuple[int, ...]
    ended_on_eos: bool

    @classmethod
    def of(cls, gen: Generation) -> "Draft":
        return cls(tuple(gen.token_ids), gen.ended_on_eos)


def draft_target(prompt: list[int], draft: Draft, eos_id: int) -> ScoreRequest:
    """What scoring the draft covers: its ids, then the EOS it ended on, so the stop decision is checked too."""
    return ScoreRequest(list(prompt), list(draft.reply_ids) + ([eos_id] if draft.ended_on_eos else []))


def agreement(target_ids: list[int], topk_ids_T_K: np.ndarray, topk_logp_T_K: np.ndarray,
              eos_ids: list[int]) -> tuple[int, int | None]:
    """(n, token): the first n target ids are the scoring weights' own argmax choices, and `token` is their choice at
    position n (None when all agree). An EOS target agrees with any EOS choice (a model may have several)."""
    eos = set(eos_ids)
    best_T = topk_ids_T_K[np.arange(len(target_ids)), np.argmax(topk_logp_T_K, axis=1)]
    for t, (want, got) in enumerate(zip(target_ids, best_T.tolist())):
        if got != want and not (want in eos and got in eos):
            return t, int(got)
    return len(target_ids), None


def _usable(draft: Draft | None, max_tokens: int) -> bool:
    """A draft can stand for a greedy reply of `max_tokens` if it ended on EOS within them or filled them exactly
    (a draft from another budget cannot: its stop decision would fall outside this one)."""
    if draft is None:
        return False
    n = len(draft.reply_ids)
    return n < max_tokens if draft.ended_on_eos else n == max_tokens


def greedy_from_drafts(engine, prompts: list[list[int]], drafts: list[Draft | None], max_tokens: int,
                       eos: list[int], scores: list[TokenScores] | None = None) -> tuple[list[Generation], dict]:
    """The loaded weights' greedy replies (at most `max_tokens`) to `prompts`, starting from `drafts` (None: no
    draft, generated whole); `eos`: the ids the engine stops on, the first one closing a draft's target.
    `scores`: the drafts' top-k under the loaded weights, in the order of `draft_targets(prompts, drafts, eos[0],
    max_tokens)`, when the caller already has them; else they are scored here (top-1).
    Returns the replies and counts: rows, drafted, agreed (the draft was the reply), generated_tokens."""
    targets = draft_targets(prompts, drafts, eos[0], max_tokens)
    if scores is None:
        scores = engine.score(list(targets.values()), top_k=1) if targets else []
    done: dict[int, tuple[list[int], list[float], bool]] = {}  # row -> (ids, log-probs, ended on EOS)
    agreed = 0
    todo: dict[int, tuple[list[int], list[float]]] = {i: ([], []) for i in range(len(prompts)) if i not in targets}
    for (i, target), s in zip(targets.items(), scores):
        n, choice = agreement(target.target_ids, s.topk_ids_T_K, s.topk_logp_T_K, eos)
        ids, logps = target.target_ids[:n], [float(x) for x in s.logp_T[:n]]
        if choice is None:  # the draft is the reply
            ended, agreed = drafts[i].ended_on_eos, agreed + 1  # type: ignore[union-attr]
            done[i] = (ids[:-1] if ended else ids, logps[:-1] if ended else logps, ended)
            continue
        logps.append(float(np.max(s.topk_logp_T_K[n])))
        if choice in eos:
            done[i] = (ids, logps[:-1], True)
        elif n + 1 >= max_tokens:
            done[i] = (ids + [choice], logps, False)
        else:
            todo[i] = (ids + [choice], logps)
    generated = _continue(engine, prompts, todo, max_tokens, done)
    replies = [_generation(engine, prompts[i], *done[i], max_tokens) for i in range(len(prompts))]
    return replies, {"rows": len(prompts), "drafted": len(targets), "agreed": agreed, "generated_tokens": generated}


def draft_targets(prompts: list[list[int]], drafts: list[Draft | None], eos_id: int,
                  max_tokens: int) -> dict[int, ScoreRequest]:
    """Row -> the scoring request of its draft, for the rows whose draft can stand for a reply of `max_tokens`."""
    return {i: draft_target(p, d, eos_id) for i, (p, d) in enumerate(zip(prompts, drafts))  # type: ignore[arg-type]
            if _usable(d, max_tokens)}


def _continue(engine, prompts, todo: dict, max_tokens: int, done: dict) -> int:
    """Generate every unfinished row greedily from its agreed prefix in one batch; fills `done`, returns the number
    of tokens generated. Rows with less budget left are cut after the fact: a cut greedy reply is the shorter one."""
    if not todo:
        return 0
    rows = list(todo)
    budget = max(max_tokens - len(todo[i][0]) for i in rows)
    gens = engine.generate([list(prompts[i]) + todo[i][0] for i in rows],
                           SamplingParams(max_tokens=budget, temperature=0.0, seed=0))
    for i, gen in zip(rows, gens):
        prefix, logps = todo[i]
        left = max_tokens - len(prefix)
        ended = gen.ended_on_eos and len(gen.token_ids) < left
        done[i] = (prefix + list(gen.token_ids[:left]), logps + list(gen.logprobs[:left]), ended)
    return sum(len(g.token_ids) for g in gens)


def _generation(engine, prompt: list[int], ids: list[int], logps: list[float], ended: bool,
                max_tokens: int) -> Generation:
    text = engine.tokenizer.decode(ids, skip_special_tokens=True)
    return Generation(ids, text, logps, ended or len(ids) < max_tokens, len(prompt), engine.version, ended)
