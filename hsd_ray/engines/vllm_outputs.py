"""Reading vLLM's request outputs into the engine records: the sampled ids' log-probs of a generation and the
target positions of a scoring pass (prompt logprobs). Shared by engines/vllm.py (offline `LLM`) and
engines/vllm_async.py (`AsyncLLM`); the layouts are described in engines/vllm.py's docstring.
"""

from __future__ import annotations

import numpy as np

from hsd_ray.core.engine_api import ScoreRequest, TokenScores


def supports_flat_logprobs() -> bool:
    from vllm import SamplingParams as VSamplingParams

    try:
        VSamplingParams(max_tokens=1, flat_logprobs=True)
    except TypeError:
        return False
    return True


def sampled_logprobs(container, ids: list[int]) -> list[float]:
    """Log-prob of each sampled id from a generation's logprobs (requested with logprobs=0)."""
    if container is None:
        return [float("nan")] * len(ids)
    if hasattr(container, "start_indices"):  # FlatLogprobs: the sampled token is the first entry of each position
        return [float(container.logprobs[s]) for s in container.start_indices[: len(ids)]]
    return [float(d[t].logprob) for d, t in zip(container, ids)]


def top_logprobs(container, ids: list[int], k: int) -> list | None:
    """The k most likely (id, raw log-prob) at each generated position (requested with logprobs=k), best first; None
    when k is 0. The sampled token is listed only where it is among them."""
    if k <= 0 or container is None:
        return None
    if hasattr(container, "start_indices"):  # FlatLogprobs: per position [sampled, rank 1, ..., rank k]
        return [list(zip(container.token_ids[s + 1 : e], map(float, container.logprobs[s + 1 : e])))
                for s, e in zip(container.start_indices[: len(ids)], container.end_indices[: len(ids)])]
    # dicts id -> Logprob; the sampled id is there with its true rank
    return [_ranked(entry, sampled, k) for entry, sampled in zip(container, ids)]


def _ranked(entry: dict, actual: int, k: int) -> list[tuple[int, float]]:
    """The k best (id, log-prob) of one position's dict of Logprobs, which also holds the actual (sampled or target)
    token with its true rank; a rank tie between it and the k-th is resolved in favour of the real top-k entry."""
    ranked = sorted(entry.items(), key=lambda kv: (kv[1].rank, kv[0] == actual))[:k]
    return [(tok, float(lp.logprob)) for tok, lp in ranked]


def extract_scores(plp, req: ScoreRequest, top_k: int) -> TokenScores:
    """The target positions of one request's prompt logprobs → TokenScores ([T], [T, K])."""
    P, T = len(req.prompt_ids), len(req.target_ids)
    if plp is None or len(plp) != P + T:
        raise RuntimeError(f"vLLM returned {None if plp is None else len(plp)} prompt logprobs for {P + T} tokens")
    logp = np.empty(T, dtype=np.float32)
    ids = np.empty((T, top_k), dtype=np.int64)
    lps = np.empty((T, top_k), dtype=np.float32)
    if hasattr(plp, "start_indices"):  # FlatLogprobs: per position [actual, rank 1, ..., rank k]
        starts = plp.start_indices[P : P + T]
        ends = plp.end_indices[P : P + T]
        for t, (s, e) in enumerate(zip(starts, ends)):
            if e - s != top_k + 1 or plp.token_ids[s] != req.target_ids[t]:
                raise RuntimeError(f"unexpected vLLM prompt-logprob layout at target {t}")
            logp[t] = plp.logprobs[s]
            if top_k:
                ids[t] = plp.token_ids[s + 1 : e]
                lps[t] = plp.logprobs[s + 1 : e]
    else:  # list of dicts token -> Logprob; the actual token is always present, with its true rank
        for t in range(T):
            entry = plp[P + t]
            actual = req.target_ids[t]
            logp[t] = entry[actual].logprob
            if top_k:
                ranked = _ranked(entry, actual, top_k)
                if len(ranked) != top_k:
                    raise RuntimeError(f"vLLM returned {len(ranked)} < {top_k} top log-probs at target {t}")
                ids[t] = [tok for tok, _ in ranked]
                lps[t] = [lp for _, lp in ranked]
    if not top_k:
        return TokenScores(logp)
    return TokenScores(logp, ids, lps)
